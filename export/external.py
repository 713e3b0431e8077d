"""ONNX files over protobuf's 2 GB limit keep their weights in one external-data file beside the
graph (``<part>.onnx.data``), which the manifest lists and hashes like any file."""

from __future__ import annotations

from pathlib import Path

PROTOBUF_LIMIT = 2 << 30


def save_onnx(model, path: Path, external: bool | None = None) -> list[str]:
    """Save ``model`` at ``path``; its weights go to ``<name>.data`` when ``external`` (None: when
    the model is over 2 GB). Returns the data files written, relative to the graph's folder."""
    import onnx

    path = Path(path)
    if external is None:
        external = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT - (64 << 20)
    if not external:
        onnx.save_model(model, str(path))
        return []
    data = path.name + ".data"
    (path.parent / data).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    return [data]


def consolidate(path: Path, external: bool | None = None) -> list[str]:
    """Rewrite an exported graph whose exporter scattered its weights over many files (torch does
    past 2 GB) into the graph plus one data file; returns the data files (none for a small graph)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = Path(path)
    header = onnx.load(str(path), load_external_data=False)
    scattered = {next(e.value for e in t.external_data if e.key == "location")
                 for t in _get_all_tensors(header) if uses_external_data(t)}
    if not scattered and not external:
        return []
    files = save_onnx(onnx.load(str(path)), path, external=True if scattered else external)
    for name in scattered - set(files):
        (path.parent / name).unlink(missing_ok=True)
    return files
