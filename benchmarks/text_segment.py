"""``python -m edgevfm.benchmarks.text_segment``: text-prompted segmentation (SAM's masks ranked by
CLIP, :mod:`edgevfm.runtime.families.sam_text`) judged on generated scenes with exact masks.

Each held-out scene with two or more shapes asks for every shape whose name is its own ("a large
red circle"); the top mask is compared with that shape's ground-truth mask. Rows: each background
of CLIP's crop on the FP32 pair, the proposals given as every shape's tight box (CLIP alone
choosing), then each recipe of either bundle against the other's FP32, then both quantized.

    python -m edgevfm.benchmarks.text_segment --sam trained:sam-shapes --clip trained:clip-shapes \\
        -o benchmarks/reports/applications/text-segment

Columns: top-1 mIoU against the named shape; ``right object``: the share whose top mask overlaps
the named shape more than any other (CLIP chose the right thing); ``best proposal``: the mean IoU
of the best of SAM's proposals (what a perfect ranking reaches); ``IoU with FP32's``: agreement of
the top mask with the FP32 pair's; the median time of one query (SAM embedding, proposals, CLIP).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .tool import write_report

RECIPES = ("int8-dynamic", "int8-static", "ov-int8")
PHRASE = "a {size} {name}"  # the scenes' own words: "a large red circle"


def queries(count: int) -> list[tuple[np.ndarray, str, np.ndarray, np.ndarray]]:
    """(image, text, the named shape's mask, every shape's masks) for the held-out scenes with two
    or more shapes, each shape whose name no other shape of its scene shares."""
    from .scenes import HELD_OUT_SEED, scenes

    found = []
    for scene in scenes(HELD_OUT_SEED, count):
        names = [o.name for o in scene.objects]
        if len(names) < 2:
            continue
        for obj, mask in zip(scene.objects, scene.masks):
            if names.count(obj.name) == 1:
                found.append((scene.image, PHRASE.format(size=obj.size, name=obj.name), mask, scene.masks))
    return found


def measure(sam, clip, items, background: str = "grey", boxes: bool = False) -> dict:
    """Scores of one (SAM, CLIP) pair over ``items``, and each query's top mask (for agreement)."""
    from edgevfm.runtime.families.sam_text import mask_iou, propose, rank
    from edgevfm.runtime.masks import mask_boxes

    ious, right, best, seconds, tops = [], [], [], [], []
    for image, text, target, masks in items:
        start = time.perf_counter()
        proposals = propose(sam, image, mask_boxes(masks) if boxes else None)
        found = rank(clip, image, text, proposals, top=1, background=background)
        seconds.append(time.perf_counter() - start)
        top = found[0].mask if found else np.zeros_like(target)
        tops.append(top)
        ious.append(mask_iou(top, target))
        overlaps = [(top & m).sum() for m in masks]
        right.append(bool(found) and (top & target).sum() == max(overlaps) > 0)
        best.append(max((mask_iou(mask, target) for mask, _ in proposals), default=0.0))
    return {"miou": float(np.mean(ious)), "right_object": float(np.mean(right)), "best_proposal": float(np.mean(best)),
            "hit_rate": float(np.mean(np.array(ious) > 0.5)), "median_ms": 1000 * float(np.median(seconds)),
            "queries": len(items), "tops": tops}


def make_bundles(model: str, family: str, folder: Path, recipes) -> dict[str, Path]:
    """``model`` exported and quantized with ``recipes`` (a scene-trained preset calibrates on
    training-split scenes, as its own report does)."""
    from edgevfm.export.api import export
    from edgevfm.quantize.api import quantize

    from .scene_data import calibration_set, scene_trained

    made = {"fp32": export(model, folder / family / "fp32", force=True)}
    calib = calibration_set(family, folder / "scenes") if scene_trained(model) else None
    for recipe in recipes:
        made[recipe] = quantize(made["fp32"], recipe, folder / family / recipe, calib=calib, force=True)
    return made


def run(sam_model: str, clip_model: str, work: Path, scenes: int, recipes, threads: int) -> dict:
    from edgevfm.runtime import load
    from edgevfm.runtime.families.sam_text import mask_iou

    from .machine import machine_info

    sams = make_bundles(sam_model, "sam", work, recipes)
    clips = make_bundles(clip_model, "clip", work, recipes)
    items = queries(scenes)
    loaded = {("sam", k): load(v, threads=threads) for k, v in sams.items()}
    loaded.update({("clip", k): load(v, threads=threads) for k, v in clips.items()})
    plan = [("fp32", "fp32", "grey", False), ("fp32", "fp32", "blur", False), ("fp32", "fp32", "none", False),
            ("fp32", "fp32", "grey", True)]
    plan += [(r, "fp32", "grey", False) for r in recipes] + [("fp32", r, "grey", False) for r in recipes]
    plan += [(r, r, "grey", False) for r in recipes]
    rows, reference = [], None
    for i, (sam, clip, background, boxes) in enumerate(plan):
        print(f"[{i + 1}/{len(plan)}] SAM {sam}, CLIP {clip}, background {background}"
              f"{', boxes given' if boxes else ''}", file=sys.stderr, flush=True)
        row = measure(loaded["sam", sam], loaded["clip", clip], items, background, boxes)
        tops = row.pop("tops")
        if reference is None:
            reference = tops
        row["agreement"] = float(np.mean([mask_iou(a, b) if (a | b).any() else 1.0 for a, b in zip(tops, reference)]))
        rows.append({"sam": sam, "clip": clip, "background": background,
                     "proposals": "every shape's box" if boxes else "automatic", **row})
    return {"sam_model": sam_model, "clip_model": clip_model, "scenes": scenes, "phrase": PHRASE,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(threads),
            "rows": rows}


def report(results: dict, command: str, target: float = 0.8) -> str:
    m = results["machine"]
    fp32 = results["rows"][0]
    lines = [f"# Text-prompted segmentation: {results['sam_model']} ranked by {results['clip_model']}", "",
             f"Produced by `{command}` on {results['created']}.", "",
             f"{fp32['queries']} queries: every shape of the held-out scenes (seed 2024, the first {results['scenes']}; "
             f"those of two or more shapes) whose name is its own, asked as \"{results['phrase']}\". SAM proposes its "
             "automatic masks (predicted IoU > 0.5, stability > 0.8), CLIP scores each masked square crop against the "
             "text; overlapping proposals (mask IoU > 0.5) are one object, ranked by its best CLIP score and given as "
             "the mask SAM scored highest; the top mask is compared with the named shape's ground truth. INT8 bundles calibrate on "
             "training-split scenes.", "",
             f"Machine: {m['cpu']}; {m['isa']} ({', '.join(m['instruction_sets'])}); {m['threads']} threads; "
             f"{m['libraries'].get('onnxruntime', '?')} onnxruntime, {m['libraries'].get('openvino', '?')} openvino.", "",
             "| SAM | CLIP | background | proposals | top-1 mIoU | IoU > 0.5 | right object | best proposal | "
             "IoU with FP32's | ms per query |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['sam']} | {r['clip']} | {r['background']} | {r['proposals']} | {r['miou']:.3f} | "
                     f"{r['hit_rate']:.3f} | {r['right_object']:.3f} | {r['best_proposal']:.3f} | {r['agreement']:.3f} | "
                     f"{r['median_ms']:.0f} |")
    grey = {r["background"]: r["miou"] for r in results["rows"][:3]}
    best_bg = max(grey, key=grey.get)
    gap = target - fp32["miou"]
    lines += ["", "![The FP32 pair's top mask for 'a large red square' over the scene](text-segment.overlay.png)", "",
              f"- Background: **{best_bg}** serves CLIP best here ({', '.join(f'{k} {v:.3f}' for k, v in grey.items())} "
              "top-1 mIoU); the runtime's default is grey.",
              f"- Target (issue 25): top-1 mIoU >= {target} with trained presets: "
              + (f"met ({fp32['miou']:.3f})." if gap <= 0 else
                 f"missed by {gap:.3f} ({fp32['miou']:.3f}). "
                 + ("The ceiling is SAM's: the best of its proposals reaches " if fp32["best_proposal"] < target else
                    "CLIP's choice is the limit more than SAM's masks: the best of SAM's proposals would reach ")
                 + f"{fp32['best_proposal']:.3f} on average, and CLIP picks the right object in "
                 f"{fp32['right_object']:.0%} of the queries. With every shape's box given, CLIP alone choosing: "
                 f"{results['rows'][3]['miou']:.3f}.")]
    return "\n".join(lines) + "\n"


def demo(sam: Path, clip: Path, report_dir: Path, threads: int) -> None:
    """The demo's line: ``edgevfm run SAM segment --text ... --clip CLIP`` on a held-out scene of
    two shapes in different colours (a large cyan triangle, a large red square), naming the
    second; the mask and its IoU with the drawn shape. The benchmark has every query's figures."""
    from PIL import Image

    from edgevfm.runtime.cli import main as cli

    from .scenes import HELD_OUT_SEED, scene

    shown, pick = scene(HELD_OUT_SEED, 2), 1
    names = [o.name for o in shown.objects]
    report_dir.mkdir(parents=True, exist_ok=True)
    picture, out = report_dir / "text-scene.png", report_dir / "text-segment.png"
    Image.fromarray(shown.image).save(picture)
    text = PHRASE.format(size=shown.objects[pick].size, name=names[pick])
    print(f"== text prompts: SAM's masks ranked by CLIP, {picture.name} ({shown.captions[0]}), --text {text!r}")
    cli(["run", str(sam), "--threads", str(threads), "segment", str(picture), "--text", text, "--clip", str(clip),
         "--out", str(out)])
    from edgevfm.runtime.families.sam_text import mask_iou

    print(f"      IoU with the drawn {names[pick]}: {mask_iou(np.asarray(Image.open(out)) > 0, shown.masks[pick]):.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.text_segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam", default="trained:sam-shapes", help="the SAM model (exported and quantized here)")
    parser.add_argument("--clip", default="trained:clip-shapes", help="the CLIP model (exported and quantized here)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md and results.json")
    parser.add_argument("--scenes", type=int, default=40, help="held-out scenes to read (those of 2+ shapes ask)")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), help="recipes of each bundle")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    work = args.output / "bundles"
    results = run(args.sam, args.clip, work, args.scenes, args.recipes, args.threads)
    demo(work / "sam" / "fp32", work / "clip" / "fp32", args.output, args.threads)  # the example picture
    shutil.rmtree(work, ignore_errors=True)
    command = "python -m edgevfm.benchmarks.text_segment " + " ".join(argv if argv is not None else sys.argv[1:])
    return write_report(args.output, "results.json", results, report(results, command))


if __name__ == "__main__":
    sys.exit(main())
