"""The bundle: a folder with ``manifest.json`` that is the only contract between export/quantize
and the runtime.

The runtime trusts nothing in it: the manifest must parse, be small, be of a format this edgevfm
reads and pass :data:`SCHEMA` (every key the runtime reads, typed and in range); every file must
stay inside the bundle, be listed in ``files`` and match its sha256, and the folder may hold no
file the manifest does not list (a part could load it, ONNX external data for one, unhashed).
Every problem found goes into one ``BundleError``, capped so that a hostile manifest cannot make
the check slow or the error huge.

Writers go through :func:`.output.staged_bundle`, which never loses a bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError
from .schema import Problems, dict_of, integer, list_of, listed_file, nullable, obj, string

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 8 << 20  # a real manifest is a few kB
MAX_FILES = 10_000
COMPUTE = ("fp32", "bf16", "fp16")
INT8_ACTIVATIONS = ("saturation-safe", "full-range")
DTYPES = ("bool", "uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64")


def _dimension(value, where, problems) -> None:
    if isinstance(value, str):
        string(max_length=64)(value, where, problems)
    else:
        integer(0)(value, where, problems)


_TENSOR = obj({"name": string(), "dtype": string(choices=DTYPES), "shape": list_of(_dimension, max_items=8)})
_PART = obj({"file": listed_file(), "backend": string(), "precision": string(),
             "inputs": list_of(_TENSOR, min_items=1), "outputs": list_of(_TENSOR, min_items=1)},
            {"data": list_of(listed_file(), max_items=16),  # external-data files the graph loads
             # the precision a quantized part's float operations run at, where the backend lets
             # it be chosen (OpenVINO; bf16 runs as fp32 on a CPU without BF16); default fp32
             "compute": string(choices=COMPUTE),
             # a part whose 8-bit activations meet 8-bit weights: "saturation-safe" (7-bit weights),
             # or "full-range" (saturates on x86 without VNNI; see runtime/cpu.py)
             "int8_activations": string(choices=INT8_ACTIVATIONS)})
SCHEMA = obj({
    "format_version": integer(1, FORMAT_VERSION),
    "family": string(),
    "source": obj({"id": string(max_length=4096)}, {"revision": nullable(string())}),
    "parts": dict_of(_PART, min_items=1),
    "files": dict_of(string(pattern="[0-9a-f]{64}"), key_check=string(max_length=1024), min_items=1,
                     max_items=MAX_FILES),
}, {"recipe": nullable(obj({"name": string()}))})
"""The keys every bundle has, whatever its family; each family's pipeline adds its sections."""


@dataclass(frozen=True)
class Part:
    """One compiled graph of a bundle (``vision``, ``text``, ``image_encoder``, ...)."""

    name: str
    path: Path
    backend: str
    precision: str
    inputs: list[dict]
    outputs: list[dict]
    digest: str | None = None  # sha256 over the sha256 of its files (graph, then data), from the manifest
    compute: str | None = None  # the precision its float operations run at, where not its own (see _PART)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def parts(self) -> dict[str, Part]:
        files = self.manifest.get("files") or {}

        def digest(p) -> str | None:
            hashes = [files.get(f) for f in [p["file"], *(p.get("data") or [])]]
            return None if None in hashes else hashlib.sha256("".join(hashes).encode()).hexdigest()

        return {
            name: Part(name, self.path / p["file"], p["backend"], p["precision"], p["inputs"], p["outputs"], digest(p),
                       p.get("compute"))
            for name, p in self.manifest["parts"].items()
        }

    def file(self, relative: str) -> Path:
        """A file named by the manifest, checked to lie inside the bundle."""
        return _inside(self.path, relative)

    def size_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.manifest["files"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(root: Path, relative: str) -> Path:
    candidate = (root / relative).resolve()
    if os.path.isabs(relative) or not candidate.is_relative_to(root.resolve()):
        raise BundleError(root, [f"file {relative!r} lies outside the bundle: paths must be relative and inside it"])
    return candidate


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its size and format version; raises ``BundleError``."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(root, ["not a folder: expected a bundle folder made by `edgevfm export`"])
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(root, [f"no {MANIFEST}: expected a bundle made by `edgevfm export` or `edgevfm quantize`"])
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(root, [f"{MANIFEST} is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may "
                                 "hold: it was not written by edgevfm; re-export the bundle"])
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(root, [f"{MANIFEST} is not valid JSON ({str(exc)[:120]}): re-export the bundle"]) from None
    if not isinstance(manifest, dict):
        raise BundleError(root, [f"{MANIFEST} holds a {type(manifest).__name__}, expected an object"])
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(root, [f"format_version is {str(version)[:40]!r}, expected an integer"])
    if version > FORMAT_VERSION:
        raise BundleError(
            root,
            [f"format_version {version} is newer than this edgevfm reads ({FORMAT_VERSION}): upgrade edgevfm"],
        )
    return manifest


def listed_files(manifest: dict[str, Any]) -> list[str] | None:
    """The files the manifest lists, or None when ``files`` is malformed or too long to trust."""
    files = manifest.get("files")
    if isinstance(files, dict) and len(files) <= MAX_FILES:
        return list(files)
    return None


def check_bundle(root: Path, manifest: dict[str, Any], verify_hashes: bool = True) -> list[str]:
    """Every problem of a parsed manifest, structure first (the file checks rely on it): keys and
    types, then paths, unlisted files, missing files and hashes."""
    problems = Problems(listed_files(manifest))
    problems.run(SCHEMA, manifest, "manifest")
    if problems.items:
        return problems.items
    return problems.run(lambda files, _, found: _check_files(root, files, verify_hashes, found),
                        manifest["files"], "files")


def _check_files(root: Path, files: dict[str, str], verify_hashes: bool, problems: Problems) -> None:
    listed = set()
    for relative, expected in files.items():
        try:
            path = _inside(root, relative)
        except BundleError as exc:
            problems.add(exc.problems[0])
            continue
        listed.add(path)
        if not path.is_file():
            problems.add(f"file {relative!r} is missing")
        elif verify_hashes and sha256_file(path) != expected:
            problems.add(f"file {relative!r} does not match its sha256 in the manifest: it was changed or corrupted")
    resolved_root = root.resolve()
    for folder, subfolders, names in os.walk(resolved_root):
        names += [d for d in subfolders if os.path.islink(os.path.join(folder, d))]  # not walked: report
        for name in names:
            path = Path(folder) / name
            if path.resolve() not in listed and path != resolved_root / MANIFEST:
                problems.add(f"file {str(path.relative_to(resolved_root))!r} is in the bundle but not listed in "
                             "'files': a part could load it unhashed; remove it, or re-export the bundle")


def open_bundle(path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    root = Path(path)
    manifest = read_manifest(root)
    problems = check_bundle(root, manifest, verify_hashes)
    if problems:
        raise BundleError(root, problems)
    return Bundle(root, manifest)


def not_a_bundle(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not an edgevfm bundle (no manifest, or a manifest that does not pass the
    schema), or None when it is one. Files and hashes are not checked: a damaged bundle is still
    a bundle, which ``--force`` may replace."""
    try:
        manifest = read_manifest(path)
    except BundleError as exc:
        return exc.problems[0]
    problems = Problems(listed_files(manifest), cap=1).run(SCHEMA, manifest, "manifest")
    return problems[0] if problems else None


def write_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``stage`` into ``manifest['files']`` and write the manifest."""
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    manifest["files"] = {
        str(p.relative_to(stage)): sha256_file(p)
        for p in sorted(stage.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
