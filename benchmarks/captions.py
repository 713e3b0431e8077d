"""Caption and answer metrics, and the annotation files they are measured on.

- :func:`bleu4` and :func:`cider_d` score candidate captions against reference captions as the COCO
  caption evaluation does (BLEU-4: corpus-level clipped n-gram precisions with the brevity penalty
  of the closest reference length; CIDEr-D: tf-idf n-gram vectors, n = 1..4, counts clipped to the
  reference's, a Gaussian length penalty of sigma 6, times 10), on lower-cased words without
  punctuation (the COCO tokenizer's effect, without its Java dependency), or on token ids.
- :func:`vqa_accuracy` is the VQA metric: an answer is right in proportion to how many of the
  human answers (up to 3) it equals, after the VQA normalisation (lower case, punctuation and
  articles dropped).
- :func:`read_annotations` (from :mod:`edgevfm.quantize.annotations`, which calibration reads
  too) reads a folder holding a COCO-captions file or a VQA pair, and the images they name.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from edgevfm.quantize.annotations import Annotated, read_annotations  # noqa: F401 (read here before)

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


MAX_KINDS = 6  # VQA accuracy per question type when the annotations have at most this many types


def vqa_metrics(answers: list[str], annotated: list) -> dict:
    """``vqa_accuracy`` of ``answers`` (one per annotated question), and per question type
    (``vqa_accuracy (count)``, ...) where the annotations have a few types (the scenes' five)."""
    scores = [vqa_accuracy(said, a.truths) for said, a in zip(answers, annotated)]
    metrics = {"vqa_accuracy": float(sum(scores) / len(scores))}
    kinds = sorted({a.kind for a in annotated if a.kind})
    if len(kinds) <= MAX_KINDS:
        for kind in kinds:
            mine = [x for x, a in zip(scores, annotated) if a.kind == kind]
            metrics[f"vqa_accuracy ({kind})"] = float(sum(mine) / len(mine))
    return metrics


def read_data(data: str | None) -> tuple[str | None, list, list]:
    """(task, annotated items, their images as arrays) of a bench's ``--data`` folder, or
    ``(None, [], [])`` without one; unreadable annotations are an InputError."""
    import numpy as np

    from edgevfm.runtime.errors import InputError
    from edgevfm.runtime.image import load_image

    if not data:
        return None, [], []
    try:
        task, annotated = read_annotations(data)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return task, annotated, [np.asarray(load_image(a.image)) for a in annotated]
