"""Caption and answer metrics, and the annotation files they are measured on.

- :func:`bleu4` and :func:`cider_d` score candidate captions against reference captions as the COCO
  caption evaluation does (BLEU-4: corpus-level clipped n-gram precisions with the brevity penalty
  of the closest reference length; CIDEr-D: tf-idf n-gram vectors, n = 1..4, counts clipped to the
  reference's, a Gaussian length penalty of sigma 6, times 10), on lower-cased words without
  punctuation (the COCO tokenizer's effect, without its Java dependency), or on token ids.
- :func:`vqa_accuracy` is the VQA metric: an answer is right in proportion to how many of the
  human answers (up to 3) it equals, after the VQA normalisation (lower case, punctuation and
  articles dropped).
- :func:`read_annotations` reads a folder holding a COCO-captions file (``images`` and
  ``annotations`` with ``caption``) or a VQA pair (``questions`` and ``annotations`` with
  ``answers``), and the images they name.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_PUNCTUATION = re.compile(r"[^\w\s']|_")
_ARTICLES = {"a", "an", "the"}


def words(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.lower()).split()


def _tokens(caption) -> list[str]:
    """A text's words, or a sequence of token ids as they are (comparing two models' outputs needs
    no tokenizer, and a random preset's ids past its small tokenizer decode to nothing)."""
    return words(caption) if isinstance(caption, str) else [str(t) for t in caption]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(candidates: list, references: list[list]) -> float:
    """Corpus BLEU-4 of ``candidates`` (one per item) against each item's ``references``: texts,
    or sequences of token ids."""
    matched, total = [0] * 4, [0] * 4
    length = closest = 0
    for candidate, refs in zip(candidates, references):
        cand, refs = _tokens(candidate), [_tokens(r) for r in refs]
        length += len(cand)
        closest += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
        for n in range(1, 5):
            counts = _ngrams(cand, n)
            most = Counter()
            for r in refs:
                most |= _ngrams(r, n)
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(len(cand) - n + 1, 0)
    if length == 0 or 0 in matched:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = 1.0 if length > closest else math.exp(1 - closest / length)
    return brevity * math.exp(log_precision)


def cider_d(candidates: list, references: list[list], sigma: float = 6.0) -> float:
    """Mean CIDEr-D of ``candidates`` against ``references`` (document frequencies over the
    references of every item, as the COCO evaluation computes them over its test set)."""
    refs = [[_tokens(r) for r in item] for item in references]
    frequency = [Counter() for _ in range(4)]
    for item in refs:
        for n in range(4):
            frequency[n].update({g for r in item for g in _ngrams(r, n + 1)})
    items = len(refs)

    def vector(tokens, n):
        counts = _ngrams(tokens, n + 1)
        weights = {g: c * math.log(items / max(1.0, frequency[n][g])) for g, c in counts.items()}
        return weights, math.sqrt(sum(w * w for w in weights.values()))

    scores = []
    for candidate, item in zip(candidates, refs):
        cand = _tokens(candidate)
        score = 0.0
        for n in range(4):
            vc, norm_c = vector(cand, n)
            for ref in item:
                vr, norm_r = vector(ref, n)
                dot = sum(min(w, vr[g]) * vr[g] for g, w in vc.items() if g in vr)
                if norm_c and norm_r:
                    score += dot / (norm_c * norm_r) * math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma ** 2))
        scores.append(10.0 * score / (4 * len(item)))
    return float(sum(scores) / len(scores)) if scores else 0.0


def normalize_answer(text: str) -> str:
    return " ".join(w for w in words(text) if w not in _ARTICLES)


def vqa_accuracy(answer: str, human_answers: list[str]) -> float:
    said = normalize_answer(answer)
    return min(1.0, sum(normalize_answer(a) == said for a in human_answers) / 3)


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
