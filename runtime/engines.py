"""Engine build plans: for each TensorRT-format part of a bundle, the ``trtexec`` command that
builds its engine on the device, with optimization profiles from the manifest's dynamic axes and
the pipeline's run sizes, and the cache folder the engine goes to (:func:`.tensorrt.engine_cache`:
keyed by the part's digest, the GPU and TensorRT's version). ``edgevfm engines BUNDLE`` prints the
plan (``--json``, or ``--output`` a shell script); with ``--build``, where TensorRT's Python package
or ``trtexec`` is present, it builds the engines itself.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

from .bundle import open_bundle
from .errors import InputError, MissingExtraError, UsageError

# (min, opt, max) of each named dimension the exporters write, with C the bundle's context length
# (:func:`context_length`). A part with a KV cache is profiled for decoding (opt: one new token after
# P cached ones), and min, opt and max each keep sequence + past = total, so that every shape of
# the profile is one the graph can run (a prefill is sequence <= C with past 0). A text tower whose
# tokenizer pads to its context (CLIP) is optimised for that length. A pipeline's run sizes fix a
# dimension (SAM's encoder: batch 1).
DIM_RANGES = {"batch": (1, 1, 8), "prompts": (1, 4, 64), "points": (1, 2, 16), "question": (1, 16, "C"),
              "sequence": (1, 32, "C"), "past": (0, "P", "C-1"), "total": (1, "P+1", "2C-1")}
CACHED = 255  # P: the cached positions a decoding profile is optimised for (fewer where C is shorter)
DECODING = {"sequence": (1, 1, "C")}  # a part with a past input
UNKNOWN_DIM = (1, 1, 64)
DEFAULT_CONTEXT = 512
TARGETS = ("tensorrt-10.3", "tensorrt-10.15")  # as the check's operator tables (quantize/tensorrt-operators.json)


def context_length(manifest: dict) -> int:
    """The longest sequence a bundle's text parts take: its language model's or text tower's context."""
    for section, key in (("llm", "context_length"), ("text", "context_length"), ("tokenizer", "max_length")):
        found = (manifest.get(section) or {}).get(key)
        if isinstance(found, int) and found > 1:
            return found
    return DEFAULT_CONTEXT


def _size(value, context: int) -> int:
    cached = min(CACHED, context - 1)
    return {"C": context, "C-1": context - 1, "2C-1": 2 * context - 1, "P": cached, "P+1": cached + 1}.get(value, value) \
        if isinstance(value, str) else value


def profiles(manifest: dict, part: str, run_sizes: dict[str, int] | None = None) -> dict[str, tuple]:
    """{input: (min shape, opt shape, max shape)} for each input of ``part`` with a dynamic dimension."""
    context, fixed, found = context_length(manifest), run_sizes or {}, {}
    inputs = manifest["parts"][part]["inputs"]
    ranges_of = dict(DIM_RANGES)
    if any("past" in t["shape"] for t in inputs):
        ranges_of.update(DECODING)
    elif (manifest.get("tokenizer") or {}).get("padding") == "max_length":
        ranges_of["sequence"] = (1, "C", "C")
    for tensor in inputs:
        if all(isinstance(d, int) for d in tensor["shape"]):
            continue
        shapes = [[], [], []]
        for dim in tensor["shape"]:
            if isinstance(dim, int):
                ranges = (dim, dim, dim)
            elif dim in fixed:
                ranges = (fixed[dim],) * 3
            else:
                low, opt, high = (_size(v, context) for v in ranges_of.get(dim, UNKNOWN_DIM))
                ranges = (low, min(max(opt, low), high), high)
            for shape, size in zip(shapes, ranges):
                shape.append(size)
        found[tensor["name"]] = tuple(tuple(s) for s in shapes)
    return found


def _shapes(profile: dict, i: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in sizes[i])}" for name, sizes in profile.items())


def plan(bundle_path, target: str | None = None) -> dict:
    """The build plan of every TensorRT-format part (see the module). ``target`` (tensorrt-10.3,
    tensorrt-10.15) names the TensorRT the engines are for where this machine has none to ask."""
    from .pipeline import PIPELINES
    from .tensorrt import cache_key, gpu_identity, tensorrt_version
    from . import families  # noqa: F401  (registers the pipelines)

    if target is not None and target not in TARGETS:
        raise UsageError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    bundle = open_bundle(bundle_path)
    run_sizes = PIPELINES.get(bundle.family).variant(bundle.manifest).run_sizes
    settings = (bundle.manifest.get("recipe") or {}).get("parts") or {}
    gpu, version = gpu_identity(), tensorrt_version() or (target.split("-")[1] if target else None)
    parts, other = {}, []
    for name, part in bundle.parts.items():
        if part.backend != "tensorrt":
            other.append(name)
            continue
        key = cache_key(part.digest, gpu, version)
        engine = f"$EDGEVFM_CACHE/tensorrt/{key}/{part.path.stem}.engine"
        profile = profiles(bundle.manifest, name, run_sizes.get(name))
        strongly_typed = bool((settings.get(name) or {}).get("strongly_typed"))
        flags = ["--stronglyTyped"] if strongly_typed else (["--fp16"] if part.precision == "fp16" else [])
        command = ["trtexec", f"--onnx={part.path}", f"--saveEngine={engine}",
                   f"--timingCacheFile=$EDGEVFM_CACHE/tensorrt/{key}/timing.cache", *flags]
        if profile:
            command += [f"--minShapes={_shapes(profile, 0)}", f"--optShapes={_shapes(profile, 1)}",
                        f"--maxShapes={_shapes(profile, 2)}"]
        parts[name] = {"file": str(part.path), "precision": part.precision, "strongly_typed": strongly_typed,
                       "profiles": {k: [list(s) for s in v] for k, v in profile.items()}, "engine": engine,
                       "cache_key": {"digest": part.digest, "gpu": (gpu or {}).get("name"),
                                     "compute_capability": (gpu or {}).get("compute_capability"), "tensorrt": version},
                       "command": " ".join(shlex.quote(c) if "$" not in c else f'"{c}"' for c in command)}
    if not parts:
        raise InputError(f"{bundle.path} has no TensorRT-format part: quantize it with a trt-* recipe first "
                         "(edgevfm quantize BUNDLE --recipe trt-int8 -o OUT)")
    return {"bundle": str(bundle.path), "family": bundle.family, "target": target, "gpu": gpu, "tensorrt": version,
            "parts": parts, "other_parts": other}


def script(found: dict) -> str:
    """The plan as a shell script to run on the device."""
    lines = ["#!/bin/sh", "# TensorRT engines for " + found["bundle"] + " (written by edgevfm engines)", "set -e",
             'EDGEVFM_CACHE="${EDGEVFM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edgevfm}"']
    for name, part in found["parts"].items():
        lines += [f"# {name}: {part['precision']}", f'mkdir -p "$(dirname "{part["engine"]}")"', part["command"]]
    return "\n".join(lines) + "\n"


def write_script(found: dict, path) -> Path:
    """:func:`script` to ``path`` (executable), written beside it first and renamed into place."""
    from .errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: --output takes the path of the script to write (engines.sh)")
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent} does not exist: create it, or write the script elsewhere")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(script(found))
    partial.chmod(0o755)
    partial.replace(path)
    return path


def build(found: dict) -> list[Path]:
    """Build every planned engine: with trtexec where it is on PATH (the plan's commands), else with
    TensorRT's Python API; the typed error where neither is present."""
    from .backends import cache_root
    from .tensorrt import JETSON_INSTALL

    built = []
    trtexec = shutil.which("trtexec") or next((str(p) for p in [Path("/usr/src/tensorrt/bin/trtexec")] if p.is_file()),
                                              None)
    for name, part in found["parts"].items():
        engine = Path(part["engine"].replace("$EDGEVFM_CACHE", str(cache_root())))
        engine.parent.mkdir(parents=True, exist_ok=True)
        if trtexec:
            command = part["command"].replace("$EDGEVFM_CACHE", str(cache_root())).replace("trtexec", trtexec, 1)
            subprocess.run(shlex.split(command), check=True)
        else:
            try:
                import tensorrt  # noqa: F401
            except ImportError as exc:
                raise MissingExtraError("TensorRT", "building engines (trtexec is not on PATH either)", exc,
                                        install=JETSON_INSTALL) from None
            from .trt_engine import build_engine

            build_engine(Path(part["file"]), engine, part["profiles"], part["strongly_typed"],
                         part["precision"] == "fp16")
        built.append(engine)
    return built


def describe(found: dict) -> str:
    lines = [f"{found['bundle']} ({found['family']}): TensorRT {found['tensorrt'] or 'unknown (pass --target)'}, GPU "
             f"{(found['gpu'] or {}).get('name', 'none here: build on the device')}"]
    for name, part in found["parts"].items():
        lines += [f"  {name} [{part['precision']}]", f"    {part['command']}"]
    if found["other_parts"]:
        lines.append(f"  not TensorRT-format (they stay on their backend): {', '.join(found['other_parts'])}")
    return "\n".join(lines)


def write_json(found: dict) -> str:
    return json.dumps(found, indent=2)
