"""``python -m edgevfm.benchmarks.fp16_fragility``: which parts of a model go wrong in FP16.

Each part of each model (the module its exporter traces, on the exporter's own validation inputs)
runs in FP32 and in FP16 PyTorch, and the outputs are compared: the lowest cosine over the batch,
the largest error relative to the output's range, and, for mask logits (SAM), the IoU of the masks
they make. A part is *fragile* below ``MIN_COSINE`` / ``MIN_MASK_IOU`` or with a non-finite output;
the ``trt-fp16`` recipe and the family TensorRT recipes keep fragile parts (or operations) in FP32.

On a CUDA GPU the FP16 run is the GPU's; without one it is PyTorch's FP16 on the CPU (weights and
activations cast to float16, each operation computed and rounded at float16 where PyTorch has a
CPU kernel for it), which the report says. Random-weight presets say little about trained ones:
run it on the checkpoints you deploy.

    python -m edgevfm.benchmarks.fp16_fragility --model random:sam-tiny --model random:clip-tiny -o fp16-fragility
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path

import numpy as np

MIN_COSINE, MIN_MASK_IOU = 0.999, 0.98


def compare(reference, found, name: str) -> dict:
    """Figures of one output, ``found`` (FP16) against ``reference`` (FP32), as float32 arrays."""
    figures = {"finite": bool(np.isfinite(found).all())}
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowed FP16 output: its figures say so
        figures.update(_closeness(reference, found))
    if "mask" in name:
        a, b = reference > 0, found > 0
        union = (a | b).reshape(len(a), -1).sum(1)
        iou = np.where(union > 0, (a & b).reshape(len(a), -1).sum(1) / np.maximum(union, 1), 1.0)
        figures["mask_iou_worst"] = float(iou.min())
    figures["fragile"] = (not figures["finite"] or figures.get("cosine_worst", 1.0) < MIN_COSINE
                          or figures.get("mask_iou_worst", 1.0) < MIN_MASK_IOU)
    return figures


def _closeness(reference, found) -> dict:
    ref, got = reference.reshape(len(reference), -1), np.nan_to_num(found.reshape(len(found), -1))
    if not ref.shape[1] or ref.dtype.kind != "f":
        return {}
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.where(norms > 0, (ref * got).sum(1) / np.maximum(norms, 1e-30), 1.0)
    spread = float(np.abs(ref).max()) or 1.0
    return {"cosine_worst": float(np.nan_to_num(cosine.min(), nan=-1.0)),
            "max_error_of_range": float(np.abs(ref - got).max() / spread)}


def measure(model: str, device: str | None = None) -> dict:
    """{part: {output: figures}, ...} for one model, and where the FP16 ran."""
    import torch

    from edgevfm.export.checkpoint import load_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(model)
    parts = {}
    for part in checkpoint.spec.parts(checkpoint):
        wrapper = part.wrapper(checkpoint.model).eval()
        feeds = part.example(part.check_batch, part.check_variants[0])
        with torch.no_grad():
            expected = _as_tuple(wrapper(*feeds.values()))
            half = copy.deepcopy(wrapper).half().to(device)
            inputs = [v.to(device).half() if v.is_floating_point() else v.to(device) for v in feeds.values()]
            try:
                found = _as_tuple(half(*inputs))
            except RuntimeError as exc:  # an operation without an FP16 kernel on this device
                parts[part.name] = {"error": str(exc).splitlines()[0][:200]}
                continue
        parts[part.name] = {spec.name: compare(ref.float().cpu().numpy(), got.float().cpu().numpy(), spec.name)
                            for spec, ref, got in zip(part.outputs, expected, found)}
    return {"model": model, "family": checkpoint.spec.name, "device": device,
            "fp16": "the GPU's" if device.startswith("cuda") else "PyTorch's FP16 on the CPU (no GPU here)",
            "parts": parts, "fragile": sorted(name for name, outputs in parts.items()
                                              if "error" in outputs or any(o["fragile"] for o in outputs.values()))}


def _as_tuple(found):
    return tuple(found) if isinstance(found, (tuple, list)) else (found,)


def page(results: list[dict], command: str) -> str:
    lines = ["# FP16 fragility", "", f"Produced by `{command}`.", "",
             f"A part is fragile below a cosine of {MIN_COSINE} or a mask IoU of {MIN_MASK_IOU} to FP32, or with a "
             "non-finite output.", ""]
    for found in results:
        lines += [f"## {found['model']} ({found['family']}), FP16: {found['fp16']}", "",
                  "| part | output | cosine worst | max error / range | mask IoU worst | fragile |", "|---|---|---|---|---|---|"]
        for part, outputs in found["parts"].items():
            if "error" in outputs:
                lines.append(f"| {part} | — | — | — | — | cannot run: {outputs['error']} |")
                continue
            for name, f in outputs.items():
                cells = [f"{f[k]:.5f}" if k in f else "—" for k in ("cosine_worst", "max_error_of_range", "mask_iou_worst")]
                lines.append(f"| {part} | {name} | " + " | ".join(cells) + f" | {'yes' if f['fragile'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.fp16_fragility",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a model (hub id, folder or random:<preset>)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for fp16-fragility.md/.json")
    parser.add_argument("--device", help="cuda or cpu (default: cuda where present)")
    args = parser.parse_args(argv)
    command = "python -m edgevfm.benchmarks.fp16_fragility " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = [measure(model, args.device) for model in args.model]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "fp16-fragility.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    (args.output / "fp16-fragility.md").write_text(page(results, command))
    for found in results:
        print(f"{found['model']}: fragile in FP16 ({found['fp16']}): {', '.join(found['fragile']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
