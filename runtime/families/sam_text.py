"""Text-prompted segmentation: SAM proposes masks, CLIP names them. SAM's released model has no
text path; what people deploy instead is SAM's masks ranked by CLIP: each proposal (an automatic
mask, or the mask of a box the caller gives) is cut out of the image as a square crop around it,
its background greyed or blurred so that CLIP sees the object alone, and scored by CLIP's cosine
similarity with the text. One SAM embedding per image; CLIP's image tower runs on the batch of
crops, its text tower once.

Which background serves best, and how close the top mask comes to the named object, are measured
by ``python -m edgevfm.benchmarks.text_segment`` (its report:
benchmarks/reports/applications/text-segment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..errors import InputError
from ..image import ImageLike, load_image
from ..masks import mask_boxes

BACKGROUNDS = ("grey", "blur", "none")  # outside the mask: CLIP's mean colour, the image blurred, as is
# Proposal filters: looser than SAM's automatic defaults (0.88, 0.95), since CLIP ranks the
# proposals afterwards and a mask filtered out here can never be chosen
PRED_IOU_THRESH, STABILITY_THRESH = 0.5, 0.8
SAME_OBJECT = 0.5  # mask IoU above which two proposals are one object
MARGIN = 0.15  # of the mask's longer side, added around it on each side of the crop


@dataclass
class TextMask:
    """One proposal, scored: ``mask`` (H, W) bool at the image's resolution; ``clip_score`` CLIP's
    cosine similarity of the masked crop with the text (what the ranking follows);
    ``probability`` the softmax of CLIP's logits over the proposals; ``predicted_iou`` SAM's own
    score for the mask; ``box`` XYXY in image pixels."""

    mask: np.ndarray
    clip_score: float
    probability: float
    predicted_iou: float
    box: list[float]


def segment_text(sam, clip, image: ImageLike, text: str, top: int = 3, boxes=None, background: str = "grey",
                 **proposals) -> list[TextMask]:
    """The ``top`` objects of ``image`` that CLIP finds most like ``text``, best first, one mask
    each. ``sam`` a :class:`~.sam.SamPredictor`, ``clip`` a :class:`~.clip.ClipPipeline`.
    Proposals are SAM's automatic masks (``proposals`` go to :func:`.sam_masks.generate`;
    ``pred_iou_thresh`` and ``stability_score_thresh`` default to 0.5 and 0.8), or with ``boxes``
    (N, 4) XYXY the best of SAM's three masks for each box. An empty list when no proposal passes
    SAM's filters. See :func:`rank` for how CLIP and SAM share the choice."""
    _check_clip(clip)
    picture = load_image(image)
    return rank(clip, picture, text, propose(sam, picture, boxes, **proposals), top, background)


def _check_clip(clip) -> None:
    if getattr(clip, "family", None) != "clip":
        raise InputError(f"clip= must be a CLIP pipeline (edgevfm.runtime.load of a CLIP bundle), found "
                         f"{getattr(clip, 'family', type(clip).__name__)!r}")


def propose(sam, image: ImageLike, boxes=None, **options) -> list[tuple[np.ndarray, float]]:
    """(mask, SAM's predicted IoU) pairs: SAM's automatic masks, or its best mask for each box."""
    picture = load_image(image)
    if boxes is None:
        options = {"pred_iou_thresh": PRED_IOU_THRESH, "stability_score_thresh": STABILITY_THRESH, **options}
        return [(m["segmentation"], float(m["predicted_iou"])) for m in sam.generate(picture, **options)]
    if options:
        raise InputError(f"with boxes the proposals are the boxes' masks: {', '.join(sorted(options))} apply only to "
                         "automatic proposals")
    try:
        boxes = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"boxes must be (N, 4) XYXY numbers, found {type(boxes).__name__} ({exc})") from None
    if boxes.ndim == 1:
        boxes = boxes[None]
    result = sam.predict_batch(boxes=boxes, multimask=True, image=sam.embed(picture))
    best = result.scores.argmax(axis=1)
    return [(result.masks[i, k], float(result.scores[i, k])) for i, k in enumerate(best) if result.masks[i, k].any()]


def rank(clip, image: ImageLike, text: str, proposals: list[tuple[np.ndarray, float]], top: int = 3,
         background: str = "grey") -> list[TextMask]:
    """CLIP chooses the object, SAM the mask: every proposal's masked crop is scored by CLIP
    against ``text``; proposals overlapping one another (mask IoU > ``SAME_OBJECT``) are one
    object, ranked by its best CLIP score, and the mask given for it is the one SAM scored highest
    (CLIP, looking at a crop, tells a part of a shape from the whole one poorly; SAM's IoU head is
    trained for it). ``clip_score`` and ``probability`` are the object's best proposal's."""
    _check_clip(clip)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"the text must name what to segment, e.g. 'the red circle'; found {text!r}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be an integer >= 1, found {top!r}")
    if background not in BACKGROUNDS:
        raise InputError(f"background must be one of {', '.join(BACKGROUNDS)}, found {background!r}")
    if not proposals:
        return []
    pixels = np.asarray(load_image(image))
    fill = _mean_colour(clip)
    crops = [masked_crop(pixels, mask, background, fill) for mask, _ in proposals]
    scores = (clip.embed_images(crops) @ clip.embed_texts([text]).T)[:, 0]
    logits = clip.logit_scale * scores
    probability = np.exp(logits - logits.max())
    probability /= probability.sum()
    masks = [mask for mask, _ in proposals]
    chosen: list[TextMask] = []
    used: set[int] = set()
    for i in np.argsort(-scores, kind="stable"):
        if len(chosen) == top:
            break
        if i in used:
            continue  # a proposal of an object already given
        group = [j for j in range(len(masks)) if j not in used and mask_iou(masks[j], masks[i]) > SAME_OBJECT]
        used.update(group)
        best = max(group, key=lambda j: proposals[j][1])
        if any(mask_iou(masks[best], c.mask) > SAME_OBJECT for c in chosen):
            continue
        chosen.append(TextMask(masks[best], float(scores[i]), float(probability[i]), proposals[best][1],
                               [float(v) for v in mask_boxes(masks[best][None])[0]]))
    return chosen


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _mean_colour(clip) -> np.ndarray:
    """CLIP's normalisation mean as an RGB colour: the grey that becomes zero after preprocessing."""
    spec = clip.manifest["preprocessing"]
    return np.clip(np.asarray(spec["mean"], np.float64) / float(spec["rescale"]), 0, 255).round().astype(np.uint8)


def masked_crop(pixels: np.ndarray, mask: np.ndarray, background: str = "grey", fill=(124, 116, 104),
                margin: float = MARGIN) -> np.ndarray:
    """A square HWC uint8 crop centred on ``mask``'s box, ``margin`` of its longer side around it,
    with everything outside the mask replaced per ``background``; what falls outside the image is
    ``fill``. Square, so that CLIP's centre crop cuts nothing off."""
    fill = np.asarray(fill, np.uint8)
    if background == "grey":
        source = np.where(mask[..., None], pixels, fill)
    elif background == "blur":
        radius = max(2.0, 0.02 * max(pixels.shape[:2]))
        blurred = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))
        source = np.where(mask[..., None], pixels, blurred)
    else:
        source = pixels
    x0, y0, x1, y1 = mask_boxes(mask[None])[0]
    side = int(np.ceil(max(x1 - x0, y1 - y0, 1) * (1 + 2 * margin)))
    left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
    crop = np.empty((side, side, 3), np.uint8)
    crop[:] = fill
    height, width = pixels.shape[:2]
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, width), min(top + side, height)
    crop[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = source[sy0:sy1, sx0:sx1]
    return crop
