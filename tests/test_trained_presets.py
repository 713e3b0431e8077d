"""The presets trained here on generated scenes (training/*.py): each ships as the bytes its
preset.json records, exports through the path a user's folder takes, and scores above its floor on
held-out scenes (a seed training never reads) through the runtime with torch unimportable.

The floors guard what the shipped weights reach, less a margin for the small sample; the committed
reports measure the full held-out split against the targets (benchmarks/reports/clip-shapes,
benchmarks/reports/sam-shapes), and say by how much a target is missed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevfm.benchmarks.scene_data import write
from edgevfm.export.presets import card, verify

from test_torch_free import _run_without_torch

PRESETS = ("clip-shapes", "sam-shapes")


@pytest.mark.parametrize("name", PRESETS)
def test_a_shipped_preset_is_the_recorded_bytes_and_says_how_it_was_made(name):
    meta = card(name)
    folder = verify(name)
    assert meta["command"].startswith(f"python training/{name.replace('-', '_')}.py")
    assert {"model.safetensors", "config.json", "loss.tsv"} <= set(meta["sha256"])
    assert (folder / "model.safetensors").stat().st_size <= 20e6
    losses = [float(line.split("\t")[1]) for line in (folder / "loss.tsv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.5 * losses[0]  # it learnt


def test_clip_shapes_names_held_out_shapes_without_torch(clip_shapes_bundle, tmp_path):
    data = write("classify", tmp_path / "scenes", 60)
    result = _run_without_torch(f"""
        from pathlib import Path
        from edgevfm.runtime import load
        from edgevfm.runtime.image import list_images
        shapes = ["circle", "square", "triangle", "star", "ring", "cross"]
        p = load({str(clip_shapes_bundle)!r}, threads=1)
        right = total = 0
        for folder in sorted(Path({str(data)!r}).iterdir()):
            if folder.name in shapes:
                for image in list_images(folder):
                    best = p.classify(image, [f"a photo of a {{s}}." for s in shapes])[0][0]
                    right += best == f"a photo of a {{folder.name}}."
                    total += 1
        print(right, total)
    """)
    assert result.returncode == 0, result.stderr
    right, total = map(int, result.stdout.split())
    # the shipped weights name 0.69 of the 300-scene split (target 0.90, missed: the report says why)
    assert total == 60 and right / total >= 0.55


def test_sam_shapes_segments_held_out_shapes_without_torch(sam_shapes_bundle, tmp_path):
    from edgevfm.benchmarks.families.sam import centre_point, tight_box

    data = write("masks", tmp_path / "scenes", 12)
    content = json.loads((data / "instances.json").read_text())
    prompts = [(str(data / content["images"][a["image_id"]]["file_name"]), a["segmentation"],
                centre_point(_mask(a)), tight_box(_mask(a))) for a in content["annotations"]]
    result = _run_without_torch(f"""
        import numpy as np
        from edgevfm.runtime import load
        from edgevfm.runtime.masks import rle_to_mask
        p = load({str(sam_shapes_bundle)!r}, threads=1)
        ious = {{"point": [], "box": []}}
        for image, rle, point, box in {prompts!r}:
            truth = rle_to_mask(rle)
            p.set_image(image)
            for kind, r in (("point", p.predict(points=[point], labels=[1])), ("box", p.predict(box=box))):
                mask = r.masks[int(np.argmax(r.scores))]
                ious[kind].append((mask & truth).sum() / (mask | truth).sum())
        print(np.mean(ious["point"]), np.mean(ious["box"]), len(ious["box"]))
    """)
    assert result.returncode == 0, result.stderr
    point, box, count = result.stdout.split()
    assert int(count) == len(prompts) >= 12
    # the shipped weights: about 0.69 and 0.72 held-in (targets 0.85 and 0.90, missed: the report says why)
    assert float(point) >= 0.55 and float(box) >= 0.6


def _mask(annotation) -> np.ndarray:
    from edgevfm.runtime.masks import rle_to_mask

    return rle_to_mask(annotation["segmentation"])
