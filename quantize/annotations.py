"""Annotated data sets as ``bench --data`` and ``quantize --calib`` read them: a folder holding a
COCO-captions file (``images`` and ``annotations`` with ``caption``) or a VQA pair (``questions`` and
``annotations`` with ``answers``), and the images they name. ``edgevfm scenes`` writes both."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Annotated:
    """One annotated item: an image, a question (VQA; None for captions) and the human texts."""

    image: Path
    question: str | None
    truths: list[str]
    kind: str | None = None  # VQA: the annotation's question_type, where it has one


def read_annotations(folder: str | Path, limit: int = 200) -> tuple[str, list[Annotated]]:
    """("caption" or "vqa", up to ``limit`` items) from the annotation files in ``folder``; a
    ``ValueError`` saying what was expected when there are none, or an image is missing."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable JSON annotation file ({exc})") from None
        if isinstance(content, dict):
            for key in ("images", "annotations", "questions"):
                if isinstance(content.get(key), list):
                    found.setdefault(key, content[key])
    annotations = found.get("annotations") or []
    names = {int(im["id"]): im["file_name"] for im in found.get("images", []) if "id" in im and "file_name" in im}
    if annotations and "caption" in annotations[0]:
        captions: dict[int, list[str]] = {}
        for a in annotations:
            captions.setdefault(int(a["image_id"]), []).append(str(a["caption"]))
        items = [Annotated(_image(folder, i, names), None, texts) for i, texts in list(captions.items())[:limit]]
        return "caption", items
    if annotations and "answers" in annotations[0] and found.get("questions"):
        answers = {int(a["question_id"]): [str(x["answer"]) for x in a["answers"]] for a in annotations}
        kinds = {int(a["question_id"]): a.get("question_type") for a in annotations}
        items = [Annotated(_image(folder, int(q["image_id"]), names), str(q["question"]),
                           answers[int(q["question_id"])], kinds[int(q["question_id"])])
                 for q in found["questions"][:limit] if int(q["question_id"]) in answers]
        return "vqa", items
    raise ValueError(f"no annotations in {str(folder)!r}: expected a COCO-captions JSON (images, annotations with "
                     "caption) or VQA JSON files (questions; annotations with answers), beside the images")


def _image(folder: Path, image_id: int, names: dict[int, str]) -> Path:
    """The image file of ``image_id``: its ``file_name`` in the COCO ``images`` list, else a file
    whose name ends with the id (COCO_val2014_000000000042.jpg)."""
    if image_id in names:
        for path in (folder / names[image_id], folder / "images" / names[image_id]):
            if path.is_file():
                return path
    else:
        for path in sorted(folder.rglob("*")):
            digits = re.findall(r"\d+", path.stem)
            if path.is_file() and path.suffix.lower() != ".json" and digits and int(digits[-1]) == image_id:
                return path
    raise ValueError(f"no image for image_id {image_id} under {str(folder)!r}: expected "
                     f"{names.get(image_id, f'a file named by its id, e.g. COCO_val2014_{image_id:012d}.jpg')}")
