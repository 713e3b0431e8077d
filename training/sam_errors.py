"""Where a SAM preset's masks miss: held-out mIoU for the centre point and the tight box (the
benchmark's prompts, the best-scored of the three multimask answers) broken down by shape, size,
objects in the scene and occlusion, beside the best of the three (what a perfect IoU head would pick)
and the best threshold on the mask logits. A diagnostic for training/sam_shapes.py, never run by the
tests or the demo; the benchmark's report holds the headline figures.

    .venv/bin/python training/sam_errors.py sam-shapes            # about 10 seconds
    .venv/bin/python training/sam_errors.py /path/to/a/sam/folder --scenes 100
    .venv/bin/python training/sam_errors.py sam-shapes -o benchmarks/reports/sam-shapes-errors   # the committed one
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PRESETS, start  # noqa: E402

from edgevfm.benchmarks.families.sam import centre_point, tight_box  # noqa: E402
from edgevfm.benchmarks.scenes import HELD_OUT_SEED, scenes, shape_mask  # noqa: E402
from edgevfm.runtime.families.sam_text import mask_iou  # noqa: E402

THRESHOLDS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def load(name: str):
    from transformers import SamImageProcessorPil, SamModel, SamProcessor

    folder = Path(name) if Path(name).is_dir() else PRESETS / name
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no SAM folder {name!r}: name a preset ({sorted(p.name for p in PRESETS.iterdir())}) "
                         "or a save_pretrained folder")
    return SamModel.from_pretrained(folder).eval(), SamProcessor(image_processor=SamImageProcessorPil.from_pretrained(folder))


def answers(model, processor, count: int) -> list[dict]:
    """Per held-out shape and prompt kind: the IoU of each multimask answer, which one the IoU head
    picks, the IoU at each threshold of the picked answer's logits, and how the shape was drawn."""
    rows = []
    for s in scenes(HELD_OUT_SEED, count):
        inputs = processor(images=s.image, return_tensors="pt")
        sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
        with torch.inference_mode():
            embeddings = model.get_image_embeddings(inputs["pixel_values"])
        for obj, truth in zip(s.objects, s.masks):
            prompts = {"point": {"input_points": torch.tensor([[[centre_point(truth)]]]),
                                 "input_labels": torch.ones(1, 1, 1, dtype=torch.long)},
                       "box": {"input_boxes": torch.tensor([[tight_box(truth)]])}}
            for kind, prompt in prompts.items():
                with torch.inference_mode():
                    out = model(image_embeddings=embeddings, multimask_output=True, **prompt)
                logits = processor.post_process_masks(out.pred_masks, *sizes, binarize=False)[0][0].numpy()
                picked = int(np.argmax(out.iou_scores[0, 0].numpy()))
                rows.append({"kind": kind, "shape": obj.shape, "size": obj.size, "objects": len(s.objects),
                             "occluded": bool(truth.sum() < 0.95 * shape_mask(obj, truth.shape[0]).sum()),
                             "ious": [mask_iou(m > 0, truth) for m in logits], "picked": picked,
                             "by_threshold": [mask_iou(logits[picked] > t, truth) for t in THRESHOLDS]})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="sam-shapes", help="a preset name or a SAM folder")
    parser.add_argument("--scenes", type=int, default=60, help="held-out scenes (the report's 60 by default)")
    parser.add_argument("-o", "--output", type=Path, help="also write report.md and errors.json to this folder")
    args = parser.parse_args(argv)
    start(0)
    rows = answers(*load(args.model), args.scenes)
    lines, results = [], {}
    for kind in ("point", "box"):
        mine = [r for r in rows if r["kind"] == kind]
        picked = np.array([r["ious"][r["picked"]] for r in mine])
        found = {"miou": round(float(picked.mean()), 4), "shapes": len(mine),
                 "best_of_three": round(float(np.mean([max(r["ious"]) for r in mine])), 4),
                 "by_threshold": {f"{t:+g}": round(float(np.mean([r["by_threshold"][i] for r in mine])), 4)
                                  for i, t in enumerate(THRESHOLDS)}}
        lines.append(f"- {kind}: mIoU {found['miou']:.3f} over {len(mine)} shapes; best of the three answers "
                     f"{found['best_of_three']:.3f}; by threshold on the logits "
                     + ", ".join(f"{t}: {v:.3f}" for t, v in found["by_threshold"].items()))
        for key in ("shape", "size", "objects", "occluded"):
            groups: dict = defaultdict(list)
            for r, iou in zip(mine, picked):
                groups[r[key]].append(iou)
            found[f"by_{key}"] = {str(k): [round(float(np.mean(v)), 4), len(v)] for k, v in sorted(groups.items())}
            lines.append(f"  - by {key}: " + ", ".join(f"{k} {m:.3f} ({n})" for k, (m, n) in found[f"by_{key}"].items()))
        results[kind] = found
    if args.output is None:
        print("\n".join(lines))
        return
    from datetime import datetime, timezone

    from edgevfm.benchmarks.tool import write_report

    command = " ".join(["python", "training/sam_errors.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([f"# Where the masks of {args.model} miss", "",
                      f"Made by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: held-out scenes "
                      f"(seed {HELD_OUT_SEED}, the first {args.scenes}), FP32 PyTorch, the centre point and the tight "
                      "box of every shape, the best-scored of the three answers (as the benchmark picks).", "", *lines, ""])
    write_report(args.output, "errors.json", {"model": args.model, "command": command, **results}, text)


if __name__ == "__main__":
    main()
