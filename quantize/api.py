"""``quantize``: FP32 bundle -> new bundle with every part compressed by one recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgevfm.export.api import tool_versions
from edgevfm.runtime.progress import progress
from edgevfm.runtime import load
from edgevfm.runtime.bundle import open_bundle, write_manifest
from edgevfm.quantize.errors import CalibrationError, QuantizeError
from edgevfm.runtime.errors import BundleError, InputError, MissingExtraError, UnknownNameError, UsageError
from edgevfm.runtime.output import check_out_dir, staged_bundle

from .calibration import calibration_data, calibration_texts
from .families import CALIBRATION
from .recipes import INT8_ACTIVATIONS, RECIPES, quiet_ort_logging, recipes_for

from .choosers import chooser


def quantize(bundle: str | Path, recipe: str, out: str | Path, calib: str | Path | None = None,
             samples: int | None = None, force: bool = False, block_size: int | None = None, show_progress: bool = True,
             min_cosine: float | None = None, max_drop: float | None = None, threads: int = 2,
             reuse: str | Path | None = None, quick: bool = False, data: str | Path | None = None,
             max_task_drop: float | None = None, candidates: list[str] | None = None) -> Path:
    """Apply ``recipe`` to every part of the FP32 ``bundle`` and write the result to ``out``.

    ``recipe="auto"`` measures the family's recipes of every installed backend on this machine
    (``threads``) and keeps the fastest within ``min_cosine`` / ``max_drop``; measuring is the
    benchmarks' work (:func:`edgevfm.benchmarks.auto.quantize_auto`, found through
    :mod:`.choosers`). ``reuse``: a folder of bundles already made from ``bundle``, one per recipe,
    named after it (as ``edgevfm demo`` writes them), measured instead of being quantized again.
    ``data`` and ``max_task_drop``: auto also holds each candidate's task score on ``data`` (the
    family benchmark's ``--data``; a scene-trained preset's held-out scenes by default) to at most
    ``max_task_drop`` below the FP32 bundle's. ``candidates``: the recipes auto measures (default:
    every recipe of the family, and ``fp32``).

    ``calib``: a folder of real images for calibrated recipes (default: scikit-image's photos), or
    a data set (COCO captions or VQA JSON beside its images) whose captions or questions calibrate
    the text parts too: calibrate on the domain the model serves;
    ``samples``: how many calibration images (default: the family's, 32 for CLIP, 8 for SAM).
    ``block_size``: the 4-bit recipes' group (default: 32 for ONNX Runtime's, measured by ``ov-int4``).
    ``quick``: leave out the steps that take minutes and only repair accuracy (``ov-int8``'s
    accuracy control), as ``edgevfm demo`` does; the manifest says what was left out.
    The new bundle is loaded and run once before it is put in place. ``force`` replaces an existing
    bundle at ``out``, never anything else, and never ``bundle`` itself.
    """
    out = Path(out)
    choose = chooser(recipe)
    if choose is not None:  # auto: benchmarks/auto.py measures the recipes (registered in .choosers)
        return choose(bundle, out, min_cosine=min_cosine, max_drop=max_drop, calib=calib, samples=samples,
                      force=force, block_size=block_size, threads=threads, show_progress=show_progress, reuse=reuse,
                      data=data, max_task_drop=max_task_drop, candidates=candidates)
    if any(v is not None for v in (min_cosine, max_drop, reuse, data, max_task_drop)):
        raise UsageError(f"min_cosine, max_drop, reuse, data and max_task_drop are for recipe 'auto'; recipe {recipe!r} "
                         "is applied as it is")
    if candidates is not None:
        raise UsageError(f"candidates are the recipes 'auto' measures; recipe {recipe!r} is applied as it is")
    chosen = _known(recipe, bundle)
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16
                                   or block_size & (block_size - 1)):
        raise UsageError(f"block_size must be a power of two of at least 16 (MatMulNBits), found {block_size!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise CalibrationError(f"samples must be at least 1, found {samples!r}: calibration needs data")
    if calib is not None and not Path(calib).is_dir():
        raise CalibrationError(f"calibration folder {str(calib)!r} does not exist: pass a folder of images")
    check_out_dir(out, force, inputs=[bundle])
    source = open_bundle(bundle)
    not_fp32 = {n: p.precision for n, p in source.parts.items() if p.precision != "fp32"}
    if not_fp32:
        raise BundleError(source.path, [f"quantize starts from an FP32 bundle, but parts are {not_fp32}: "
                                        "pass the bundle `edgevfm export` wrote"])
    if chosen.families and source.family not in chosen.families:
        raise UsageError(f"recipe {chosen.name!r} is for {', '.join(chosen.families)} bundles, "
                         f"{source.path} is a {source.family} bundle")
    steps = chosen.steps(list(source.parts))
    sized = {} if block_size is None else {"block_size": block_size}  # else each recipe's own (ov-int4: measured)
    if quick:
        sized["quick"] = True
    feeds, calibration = {}, None
    if chosen.needs_calibration:
        feeds = bundle_feeds(source, calib, samples)
        calibration = {"source": str(calib) if calib else "scikit-image photos", "texts": calibration_texts(calib),
                       "samples":
                       {part: len(f) for part, f in feeds.items() if steps.get(part) and steps[part].needs_calibration}}
    manifest = {k: v for k, v in source.manifest.items() if k not in ("files", "format_version")}
    parts = {name: dict(p) for name, p in manifest["parts"].items()}
    with staged_bundle(out, force=force, inputs=[bundle]) as stage:
        part_files = {f for name, p in parts.items() if steps[name] is not None for f in [p["file"], *p.get("data", [])]}
        for relative in source.manifest["files"]:
            if relative not in part_files:
                (stage / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source.file(relative), stage / relative)
        settings = {}
        for name in progress(list(parts), desc=f"quantize {chosen.name}", enabled=show_progress):
            step = steps[name]
            if step is None:
                settings[name] = {"kept": "fp32"}
                continue
            written = parts[name]["file"]
            if step.backend == "openvino":  # an IR: the graph in .xml, its weights in the .bin beside it
                written = str(Path(written).with_suffix(".xml"))
            try:
                with quiet_ort_logging():
                    settings[name] = dict(step.apply(source.file(parts[name]["file"]), stage / written,
                                                     feeds=feeds.get(name), **sized), recipe=step.name)
            except (MissingExtraError, InputError):  # an extra to install, a part the recipe cannot take
                raise
            except Exception as exc:  # an ORT failure: say which part and recipe
                raise QuantizeError(f"recipe {step.name!r} failed on part {name!r}: {exc}"
                                    f"{_disk_hint(stage, source.file(parts[name]['file']))}") from exc
            parts[name].update(file=written, precision=step.precision, backend=step.backend)
            parts[name].pop("compute", None)
            if INT8_ACTIVATIONS in settings[name]:
                parts[name][INT8_ACTIVATIONS] = settings[name].pop(INT8_ACTIVATIONS)
            if step.compute:
                parts[name]["compute"] = step.compute
            data = stage / (written + ".data")  # where save_onnx puts weights over 2 GB
            if step.backend == "openvino":
                data = (stage / written).with_suffix(".bin")
            parts[name]["data"] = [str(Path(written).with_name(data.name))] if data.is_file() else []
        recipe_entry = {"name": chosen.name, "parts": settings}
        checked = tensorrt_check(stage, parts, chosen.name)
        if checked:
            recipe_entry["tensorrt_check"] = checked
        manifest.update(parts=parts, recipe=recipe_entry,
                        calibration=calibration, tools=tool_versions(), quantized_on=quantized_on())
        write_manifest(stage, manifest)
        _smoke_run(stage, chosen.name, simulate=bool(checked))
    return out


def quantized_on() -> dict:
    """The CPU whose arithmetic a bundle's calibration and accuracy checks ran on: an INT8 part's
    measured accuracy holds for that kind of integer arithmetic (``edgevfm.runtime.cpu``)."""
    import platform

    from edgevfm.runtime.cpu import instruction_sets, isa_label

    return {"isa": isa_label(), "instruction_sets": list(instruction_sets()), "architecture": platform.machine()}


def _disk_hint(stage: Path, part: Path) -> str:
    """Converters report a full disk in their own words (OpenVINO: "basic_ios::clear: iostream
    error"): say so when the disk holding the new bundle has less than twice the part's size free."""
    free = shutil.disk_usage(stage).free
    need = 2 * sum(f.stat().st_size for f in part.parent.glob(part.name + "*"))
    if free >= max(need, 1 << 30):
        return ""
    return (f" (the disk holding {stage.parent} has {free / 1e6:.0f} MB free, and the part takes about "
            f"{need / 2e6:.0f} MB: free some space, or write the bundle elsewhere)")


def bundle_feeds(source, calib, samples: int) -> dict[str, list[dict]]:
    """The family's calibration feeds, made with the FP32 bundle's own pipeline, which is released
    on return: its sessions hold gigabytes for SAM's encoder."""
    make_feeds = CALIBRATION.get(source.family)
    samples = samples if samples is not None else make_feeds.default_samples
    pipeline = load(source.path, threads=None, low_memory=True)
    data = calibration_data(calib, samples)
    return make_feeds(pipeline, data.images, samples, captions=data.captions, questions=data.questions)


def tensorrt_check(stage: Path, parts: dict, recipe: str) -> dict | None:
    """``edgevfm check --target tensorrt`` on the TensorRT-format parts just written: an error
    finding fails the recipe (nothing is left behind); the summary, warnings included, goes into
    the manifest. None when the recipe wrote no TensorRT-format part."""
    from .check import CheckError, check_parts, summary

    written = {name: stage / p["file"] for name, p in parts.items() if p["backend"] == "tensorrt"}
    if not written:
        return None
    findings = check_parts(written)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        lines = "\n".join(f"  - {f.line()}" for f in errors[:20])
        raise CheckError(f"recipe {recipe!r} wrote graphs TensorRT would refuse ({len(errors)} findings):\n{lines}")
    return {"parts": sorted(written), "targets": summary(findings),
            "warnings": sorted({f"{f.target}: {f.part}: {f.kind}: {f.why}" for f in findings})[:20]}


def _smoke_run(stage: Path, recipe: str, simulate: bool = False) -> None:
    """Load the new bundle with the runtime (a TensorRT-format one in its CPU simulation); a graph
    the backend cannot run fails here."""
    from edgevfm.runtime.tensorrt import SIMULATE

    try:
        load(stage, threads=1, providers=SIMULATE if simulate else None)
    except Exception as exc:
        raise QuantizeError(f"recipe {recipe!r} produced a bundle the runtime cannot open: {exc}") from exc


def _known(recipe: str, bundle) -> object:
    """The registered ``recipe``; an unknown name lists the recipes for the bundle's family (auto,
    the generic ones and its own, TensorRT-format ones included), or every recipe where the bundle
    cannot be read (its own error comes once the name is right)."""
    try:
        return RECIPES.get(recipe)
    except UnknownNameError as unknown:
        try:
            family = open_bundle(bundle, verify_hashes=False).family
        except (BundleError, OSError):  # the bundle's own error: the full list, then that error comes next
            raise unknown from None
        raise UnknownNameError("recipe", recipe, ["auto", *recipes_for(family, unlisted=True)],
                               f" (the recipes for a {family} bundle; "
                               "edgevfm quantize --help describes each)") from None
