"""Where a SAM preset's masks miss: held-out mIoU for the centre point and the tight box (the
benchmark's prompts, the best-scored of the three multimask answers) broken down by shape, size,
objects in the scene and occlusion, beside the best of the three (what a perfect IoU head would pick)
and the best threshold on the mask logits. A diagnostic for training/sam_shapes.py, never run by the
tests or the demo; the benchmark's report holds the headline figures.

    .venv/bin/python training/sam_errors.py sam-shapes            # about 10 seconds
    .venv/bin/python training/sam_errors.py /path/to/a/sam/folder --scenes 100
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
    args = parser.parse_args(argv)
    start(0)
    rows = answers(*load(args.model), args.scenes)
    for kind in ("point", "box"):
        mine = [r for r in rows if r["kind"] == kind]
        picked = np.array([r["ious"][r["picked"]] for r in mine])
        print(f"{kind}: mIoU {picked.mean():.3f} over {len(mine)} shapes; best of the three answers "
              f"{np.mean([max(r['ious']) for r in mine]):.3f}; by threshold on the logits "
              + ", ".join(f"{t:+g}: {np.mean([r['by_threshold'][i] for r in mine]):.3f}" for i, t in enumerate(THRESHOLDS)))
        for key in ("shape", "size", "objects", "occluded"):
            groups: dict = defaultdict(list)
            for r, iou in zip(mine, picked):
                groups[r[key]].append(iou)
            print(f"  by {key}: " + ", ".join(f"{k} {np.mean(v):.3f} ({len(v)})" for k, v in sorted(groups.items())))


if __name__ == "__main__":
    main()
