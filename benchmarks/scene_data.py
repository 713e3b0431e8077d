"""Data sets of generated scenes (:mod:`.scenes`) in the formats ``edgevfm bench --data`` reads,
written by ``edgevfm scenes``, and the held-out data a trained preset's benchmark uses.

- ``classify``: a labelled folder, ``<shape>/<index>.png`` (one shape per scene), and beside it
  ``captions.json`` (COCO captions) over ``retrieval/<index>.png`` for image-text retrieval;
- ``captions``: ``images/<index>.png`` and ``captions.json`` (COCO captions, five references each);
- ``vqa``: ``images/`` with ``questions.json`` and ``annotations.json`` (VQA v2 layout, the one
  answer given by three annotators, so a right answer scores 1);
- ``masks``: ``images/`` and ``instances.json`` (COCO instances, masks as uncompressed RLE).

Each folder is written to a temporary name and renamed; ``scenes.json`` records what made it, and
:func:`held_out` reuses a folder whose record matches.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgevfm.runtime.masks import mask_to_rle

from .scenes import HELD_OUT_SEED, SHAPES, TRAIN_SEED, scene

KINDS = ("classify", "captions", "vqa", "masks")
# what a family's benchmark reads from the held-out split, and how many scenes of it ("family/task"
# where a family's tasks read different kinds; a retrieval bundle reads captions: image i with caption i)
FAMILY_DATA = {"clip": ("classify", 300), "sam": ("masks", 60), "blip": ("captions", 100), "blip/vqa": ("vqa", 20),
               "blip2": ("vqa", 100), "llava": ("vqa", 100)}
CALIBRATION_COUNT = 32  # training-split scenes a scene-trained preset calibrates on (each recipe takes its samples)


def data_for(family: str, task: str | None = None) -> tuple[str, int]:
    """The held-out (kind, count) a ``family`` bundle of ``task`` (the manifest's) is judged on."""
    return FAMILY_DATA.get(f"{family}/{task}", FAMILY_DATA[family])


def write(kind: str, out: str | Path, count: int, seed: int = HELD_OUT_SEED, progress: bool = False) -> Path:
    """Write ``count`` scenes of split ``seed`` as a ``kind`` data set at ``out`` (replacing it)."""
    from PIL import Image

    if kind not in KINDS:
        from edgevfm.runtime.errors import UnknownNameError

        raise UnknownNameError("scene data kind", kind, list(KINDS))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    items = range(count)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=f"scenes ({kind})", unit="scene")
    images, annotations, questions = [], [], []
    for index in items:
        name = f"{index:05d}.png"
        if kind == "classify":
            s = scene(seed, index, objects=(1, 1))
            (stage / s.label).mkdir(exist_ok=True)
            Image.fromarray(s.image).save(stage / s.label / name)
            s = scene(seed, 10 ** 6 + index)  # the retrieval set: 1 to 3 shapes, other scenes
            folder = "retrieval"
        else:
            s = scene(seed, index)
            folder = "images"
        (stage / folder).mkdir(exist_ok=True)
        Image.fromarray(s.image).save(stage / folder / name)
        images.append({"id": index, "file_name": f"{folder}/{name}", "height": s.image.shape[0], "width": s.image.shape[1]})
        if kind in ("classify", "captions"):
            captions = s.captions[:1] if kind == "classify" else s.captions
            annotations += [{"id": len(annotations), "image_id": index, "caption": c} for c in captions]
        elif kind == "vqa":
            for q, answer, what in s.questions:
                qid = len(questions)
                questions.append({"question_id": qid, "image_id": index, "question": q})
                annotations.append({"question_id": qid, "image_id": index, "question_type": what,
                                    "answers": [{"answer": answer, "answer_id": k} for k in (1, 2, 3)]})
        else:
            for k, (obj, mask) in enumerate(zip(s.objects, s.masks)):
                ys, xs = np.nonzero(mask)
                annotations.append({"id": len(annotations), "image_id": index, "category_id": SHAPES.index(obj.shape) + 1,
                                    "segmentation": mask_to_rle(mask), "area": int(mask.sum()), "iscrowd": 0,
                                    "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                                    "colour": obj.colour, "size": obj.size, "layer": k})
    record = {"kind": kind, "seed": seed, "count": count}
    if kind == "vqa":
        (stage / "questions.json").write_text(json.dumps({"questions": questions}))
        (stage / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    else:
        content = {"images": images, "annotations": annotations}
        if kind == "masks":
            content["categories"] = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
        (stage / ("instances.json" if kind == "masks" else "captions.json")).write_text(json.dumps(content))
    (stage / "scenes.json").write_text(json.dumps(record))
    if out.exists():
        shutil.rmtree(out)
    os.replace(stage, out)
    return out


def scene_trained(reference: str) -> bool:
    """Whether ``reference`` is a preset trained on the scenes (one whose weights ship in a folder)."""
    from edgevfm.export.spec import find_preset, is_preset

    return is_preset(reference) and find_preset(reference)[1].folder is not None


def bundle_from_scenes(bundle) -> bool:
    """Whether ``bundle`` (a folder) was exported from a preset trained on the scenes."""
    from edgevfm.runtime import open_bundle

    return scene_trained(open_bundle(bundle, verify_hashes=False).manifest["source"].get("id", ""))


def held_out_command(family: str, task: str | None = None) -> str:
    """The command that writes ``family``'s held-out data set (what :func:`held_out` writes)."""
    kind, count = data_for(family, task)
    return f"edgevfm scenes DIR --kind {kind} --count {count} --seed {HELD_OUT_SEED}"


def held_out(family: str, root: str | Path | None = None, task: str | None = None) -> Path:
    """The held-out data set ``family``'s benchmark reads for bundles of ``task``, written once under
    ``root`` (default: ``edgevfm-scenes`` in the temporary folder) and reused while its record matches."""
    kind, count = data_for(family, task)
    return _written(kind, HELD_OUT_SEED, count, root)


def calibration_set(family: str, root: str | Path | None = None, task: str | None = None) -> Path:
    """The scenes a preset trained on them calibrates on (``quantize --calib``): :data:`CALIBRATION_COUNT`
    of the training split, never the held-out one, as a data set whose captions (or, for a question
    answering bundle, questions) calibrate the text parts too; written once under ``root`` as
    :func:`held_out`. Calibrated on photos and English instead, static INT8 of blip-itm-shapes lost
    a fifth of its ITM accuracy (docs/trained-presets.md)."""
    kind = "vqa" if data_for(family, task)[0] == "vqa" else "captions"
    return _written(kind, TRAIN_SEED, CALIBRATION_COUNT, root)


def calibration_source(calibration: dict | None) -> str | None:
    """A bundle manifest's ``calibration`` in words for a report: what the images and texts were,
    a generated data set by the command that writes it. None for a recipe without calibration."""
    if not calibration:
        return None
    source, texts = calibration.get("source", "?"), calibration.get("texts", "the family's own")
    try:
        record = json.loads((Path(source) / "scenes.json").read_text())
        source = (f"{'training-split' if record['seed'] == TRAIN_SEED else 'generated'} scenes, `edgevfm scenes DIR "
                  f"--kind {record['kind']} --count {record['count']} --seed {record['seed']}`")
    except (OSError, ValueError, KeyError, TypeError):
        source = "scikit-image's photos" if source == "scikit-image photos" else f"`{source}`"
    return f"{source}; texts: {texts}"


def _written(kind: str, seed: int, count: int, root: str | Path | None) -> Path:
    root = Path(tempfile.gettempdir()) / "edgevfm-scenes" if root is None else Path(root)
    folder = root / f"{kind}-{seed}-{count}"
    try:
        if json.loads((folder / "scenes.json").read_text()) == {"kind": kind, "seed": seed, "count": count}:
            return folder
    except (OSError, ValueError):
        pass
    return write(kind, folder, count, seed)
