"""SAM: ``set_image`` once, then ``predict`` per prompt (points, a box, a previous mask) in a few
milliseconds; ``generate`` for automatic masks (see :mod:`.sam_masks`).

Coordinates are in input-image pixels: points (x, y), boxes XYXY (x0, y0, x1, y1), with
0 <= x <= width and 0 <= y <= height of the image given to ``set_image``.

Threads: the current image belongs to the thread that set it. Threads sharing one predictor each
prompt their own image, and ``predict`` in a thread that set none raises ``StateError``. To prompt
one image from many threads, pass the :class:`ImageEmbedding` that ``set_image`` (or ``embed``)
returns as ``image=``: it is immutable and safe to share.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, StateError
from ..image import PREPROCESSING, ImageLike, load_image, output_size, preprocess, resized_size
from ..masks import apply_resize, resize_matrices
from ..pipeline import PIPELINES, Pipeline, declared, mismatch
from ..schema import integer, number, obj
from ..tasks import Task, finite_float, new_folder, nonempty_text, png_file, positive_int, register_task
from .sam_masks import MAX_CROP_LAYERS, MAX_POINTS_PER_SIDE
from .sam_text import BACKGROUNDS, PRED_IOU_THRESH, STABILITY_THRESH


@dataclass
class Prediction:
    """``masks`` (K, H, W) bool at the image's resolution; ``scores`` (K,) predicted IoU;
    ``low_res_logits`` (K, L, L) float32, to pass back as ``mask_input`` for refinement.
    K is 3 with ``multimask=True``, else 1; masks are sorted by nothing: index i is SAM's i-th."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class ImageEmbedding:
    """One image, encoded: what every prompt on it needs. Immutable, safe to share across threads.
    ``embeddings`` (1, C, h, w) float32; ``image_size`` and ``resized`` (height, width) of the
    original and of the resized (unpadded) input-frame image."""

    embeddings: np.ndarray
    image_size: tuple[int, int]
    resized: tuple[int, int]
    to_image: tuple


@PIPELINES.register("sam")
class SamPredictor(Pipeline):
    family = "sam"
    needs = {
        "image_encoder": (("pixel_values",), ("image_embeddings",)),
        "prompt_decoder": (("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"),
                           ("low_res_masks", "iou_scores")),
    }
    run_sizes = {"image_encoder": {"batch": 1}}  # one image at a time
    manifest_schema = {"preprocessing": PREPROCESSING,
                       "constants": obj({"input_size": integer(1, 8192), "low_res_size": integer(1, 8192),
                                         "mask_threshold": number()})}

    @classmethod
    def check_consistency(cls, manifest):
        constants, size = manifest["constants"], manifest["constants"]["input_size"]
        low = constants["low_res_size"]
        return (mismatch("constants.input_size (height, width) against the image_encoder's pixel_values",
                         [size, size], declared(manifest, "image_encoder", "pixel_values")["shape"][2:])
                + mismatch("preprocessing makes images of (height, width), constants.input_size says",
                           [size, size], output_size(manifest["preprocessing"]) or ("any",))
                + mismatch("constants.low_res_size against the prompt_decoder's mask_input",
                           [low, low], declared(manifest, "prompt_decoder", "mask_input")["shape"][2:]))

    def setup(self):
        constants = self.manifest["constants"]
        self.input_size = int(constants["input_size"])
        self.low_res_size = int(constants["low_res_size"])
        self.mask_threshold = float(constants["mask_threshold"])
        self._current = threading.local()

    # -- the image ------------------------------------------------------------------------------
    def embed(self, image: ImageLike) -> ImageEmbedding:
        """Encode ``image`` (path, PIL image or HWC uint8 array) without touching the current image."""
        pil = load_image(image)
        image_size = (pil.height, pil.width)
        resized = resized_size(pil.height, pil.width, self.manifest["preprocessing"]["resize"])
        pixels = preprocess([pil], self.manifest["preprocessing"])
        embeddings = self.run("image_encoder", {"pixel_values": pixels})["image_embeddings"]
        return ImageEmbedding(embeddings, image_size, resized,
                              resize_matrices(self.low_res_size, self.input_size, resized, image_size))

    def set_image(self, image: ImageLike) -> ImageEmbedding:
        """Encode ``image`` and make it this thread's current image; returns its embedding. If this
        fails, the thread has no current image (never the previous one)."""
        self._current.image = None
        self._current.image = self.embed(image)
        return self._current.image

    def reset_image(self) -> None:
        self._current.image = None

    def _image(self, image: ImageEmbedding | None) -> ImageEmbedding:
        if image is None:
            image = getattr(self._current, "image", None)
            if image is None:
                raise StateError("no image set in this thread: call set_image(image) before predict(), or pass "
                                 "image=<the ImageEmbedding set_image or embed returned>")
        elif not isinstance(image, ImageEmbedding):
            raise InputError(f"image= must be the ImageEmbedding that set_image or embed returned, found "
                             f"{type(image).__name__}")
        return image

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of this thread's current image."""
        return self._image(None).image_size

    @property
    def embeddings(self) -> np.ndarray:
        """(1, C, h, w) embeddings of this thread's current image."""
        return self._image(None).embeddings

    # -- prompts ------------------------------------------------------------------------------
    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask: bool = True,
                image: ImageEmbedding | None = None) -> Prediction:
        """One prompt: ``points`` (N, 2) x, y with ``labels`` (N,) 1 = foreground, 0 = background;
        ``box`` (4,) XYXY; ``mask_input`` (L, L) or (1, L, L) low-res logits from an earlier
        prediction. Any mix; at least a point or a box. ``image``: an embedding to prompt instead
        of this thread's current image."""
        points = None if points is None else _reshape(_array(points, "points"), (1, -1, 2), "(N, 2) x, y pairs")
        labels = None if labels is None else _array(labels, "labels").reshape(1, -1)
        boxes = None if box is None else _array(box, "box", size=4).reshape(1, 4)
        if mask_input is not None:
            mask_input = _array(mask_input, "mask_input")
            mask_input = _reshape(mask_input, (1, 1, *mask_input.shape[-2:]), "(L, L) low-res logits")
        out = self.predict_batch(points, labels, boxes, mask_input, multimask, image=image)
        return Prediction(out.masks[0], out.scores[0], out.low_res_logits[0])

    def predict_batch(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True,
                      return_logits: bool = False, image: ImageEmbedding | None = None) -> Prediction:
        """P prompts on the current image in one decoder call: ``points`` (P, N, 2), ``labels``
        (P, N), ``boxes`` (P, 4), ``mask_input`` (P, 1, L, L). Masks come back as (P, K, H, W);
        with ``return_logits`` they are float32 logits instead of bool."""
        image = self._image(image)
        logits, scores = self.decode(points, labels, boxes, mask_input, multimask, image=image)
        full = self.to_image(logits, image=image)
        return Prediction(full if return_logits else full > self.mask_threshold, scores, logits)

    def decode(self, points=None, labels=None, boxes=None, mask_input=None, multimask: bool = True,
               image: ImageEmbedding | None = None):
        """The decoder alone: (low-res logits (P, K, L, L), predicted IoU (P, K))."""
        image = self._image(image)
        coords, point_labels, prompts = self.prompt_points(points, labels, boxes, image=image)
        low = self.low_res_size
        if mask_input is None:
            mask_input, has_mask = np.zeros((prompts, 1, low, low), np.float32), np.zeros(prompts, np.float32)
        else:
            mask_input = _array(mask_input, "mask_input")
            if mask_input.shape != (prompts, 1, low, low):
                raise InputError(f"mask_input must be ({prompts}, 1, {low}, {low}) low-res logits, found {mask_input.shape}")
            has_mask = np.ones(prompts, np.float32)
        out = self.run("prompt_decoder", {"image_embeddings": image.embeddings, "point_coords": coords,
                                          "point_labels": point_labels, "mask_input": mask_input,
                                          "has_mask_input": has_mask})
        pick = slice(1, None) if multimask else slice(0, 1)
        return out["low_res_masks"][:, pick], out["iou_scores"][:, pick]

    def to_image(self, logits: np.ndarray, image: ImageEmbedding | None = None) -> np.ndarray:
        """Low-res logits (..., L, L) -> logits (..., H, W) at the image's resolution: upscale to the
        input frame, crop its padding, resize to the original size (bilinear, as SamProcessor)."""
        return apply_resize(logits, *self._image(image).to_image)

    def prompt_points(self, points, labels, boxes, image: ImageEmbedding | None = None):
        """Validate prompts and turn them into the decoder's (coords, labels) in the input frame."""
        image = self._image(image)
        if points is None and boxes is None:
            raise InputError("empty prompt: give at least one point (with its label) or a box")
        if (points is None) != (labels is None):
            raise InputError("points and labels go together: give both or neither")
        parts_coords, parts_labels = [], []
        prompts = None
        if points is not None:
            points, labels = _array(points, "points"), _array(labels, "labels")
            if points.ndim != 3 or points.shape[-1] != 2 or labels.shape != points.shape[:2]:
                raise InputError(f"points must be (P, N, 2) with labels (P, N); found {points.shape} and {labels.shape}")
            if points.size == 0:
                raise InputError(f"points is empty (shape {points.shape}): give at least one point per prompt, "
                                 "or leave points out and give a box")
            bad = sorted(set(labels.ravel().tolist()) - {0.0, 1.0})
            if bad:
                raise InputError(f"labels must be 1 (foreground) or 0 (background), found {bad[:5]}")
            _check_inside(points.reshape(-1, 2), "point", image.image_size)
            prompts = len(points)
            parts_coords.append(points)
            parts_labels.append(labels)
        if boxes is not None:
            boxes = _array(boxes, "boxes")
            if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0 or (prompts is not None and len(boxes) != prompts):
                raise InputError(f"boxes must be (P, 4) XYXY, one per prompt; found {boxes.shape}")
            if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
                raise InputError("boxes must be XYXY with x1 > x0 and y1 > y0")
            _check_inside(boxes.reshape(-1, 2), "box corner", image.image_size)
            prompts = len(boxes)
            parts_coords.append(boxes.reshape(-1, 2, 2))
            parts_labels.append(np.tile(np.float32([2, 3]), (prompts, 1)))
        else:  # SAM's padding point when a prompt has no box
            parts_coords.append(np.zeros((prompts, 1, 2), np.float32))
            parts_labels.append(-np.ones((prompts, 1), np.float32))
        coords = np.concatenate(parts_coords, axis=1).copy()
        (h, w), (rh, rw) = image.image_size, image.resized
        padding = np.concatenate(parts_labels, axis=1) == -1
        coords[..., 0] *= rw / w
        coords[..., 1] *= rh / h
        coords[padding] = 0.0
        return coords, np.concatenate(parts_labels, axis=1), prompts

    def generate(self, image: ImageLike, **options) -> list[dict]:
        """Automatic masks for ``image``; see :func:`.sam_masks.generate` for the options. It leaves
        the current image as it was."""
        from .sam_masks import generate

        return generate(self, image, **options)

    def segment_text(self, image: ImageLike, text: str, clip, top: int = 3, boxes=None, background: str = "grey",
                     **proposals) -> list:
        """Masks of ``image`` ranked by how well ``clip`` (a CLIP pipeline) finds them like ``text``,
        best first; see :func:`.sam_text.segment_text`. It leaves the current image as it was."""
        from .sam_text import segment_text

        return segment_text(self, clip, image, text, top=top, boxes=boxes, background=background, **proposals)


def _array(values, what: str, size: int | None = None) -> np.ndarray:
    """``values`` as a float32 array of finite numbers, or an ``InputError`` saying what is wrong."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numbers, found {type(values).__name__} ({exc})") from None
    if size is not None and array.size != size:
        raise InputError(f"{what} must hold {size} numbers, found shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{what} holds NaN or infinity: prompts must be finite numbers")
    return array


def _reshape(array: np.ndarray, shape: tuple, expected: str) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:
        raise InputError(f"expected {expected}, found shape {array.shape}") from None


def _check_inside(xy: np.ndarray, what: str, image_size: tuple[int, int]) -> None:
    h, w = image_size
    outside = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if outside.any():
        first = xy[np.argmax(outside)].tolist()
        raise InputError(f"{what} {first} lies outside the image: x must be in [0, {w}] and y in [0, {h}] "
                         "(input-image pixels)")


def numbers_arg(n: int, what: str):
    """An argparse type: ``n`` comma-separated finite numbers."""
    import argparse
    import math

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != n or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated finite numbers, found {text!r}")
        return values

    parse.__name__ = what  # argparse names the type in its message
    return parse


def _segment_arguments(parser) -> None:
    from pathlib import Path

    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--point", action="append", default=[], type=numbers_arg(2, "X,Y"), metavar="X,Y",
                        help="foreground point (repeatable)")
    parser.add_argument("--negative", action="append", default=[], type=numbers_arg(2, "X,Y"), metavar="X,Y",
                        help="background point (repeatable)")
    parser.add_argument("--box", action="append", default=[], type=numbers_arg(4, "X0,Y0,X1,Y1"),
                        metavar="X0,Y0,X1,Y1", help="box, XYXY in image pixels (repeatable with --text: the proposals)")
    parser.add_argument("--single", action="store_true", help="one mask instead of the best of three")
    parser.add_argument("--out", type=png_file, default=Path("mask.png"),
                        help="mask PNG (.png); the overlay goes beside it (with --top K, the K masks as NAME.2.png ...)")
    text = parser.add_argument_group("text prompts (SAM's masks ranked by a CLIP bundle)")
    text.add_argument("--text", type=nonempty_text, help="what to segment, e.g. 'the red circle'; needs --clip")
    text.add_argument("--clip", type=Path, metavar="CLIP_BUNDLE", help="the CLIP bundle that scores the proposals")
    text.add_argument("--top", type=positive_int, default=1, help="how many masks to keep, best first (default 1)")
    text.add_argument("--background", choices=BACKGROUNDS, default="grey",
                      help="outside each proposal in CLIP's crop (default grey: the benchmark's best)")
    text.add_argument("--pred-iou-thresh", type=finite_float, default=PRED_IOU_THRESH,
                      help=f"automatic proposals' SAM IoU filter (default {PRED_IOU_THRESH})")
    text.add_argument("--stability-thresh", type=finite_float, default=STABILITY_THRESH,
                      help=f"automatic proposals' stability filter (default {STABILITY_THRESH})")


def _segment(predictor: SamPredictor, args) -> None:
    from ..overlay import overlay, save_mask

    if args.text is not None or args.clip is not None:
        return _segment_text(predictor, args)
    points = args.point + args.negative
    labels = [1] * len(args.point) + [0] * len(args.negative)
    if len(args.box) > 1:
        raise InputError(f"one --box per mask ({len(args.box)} given): several boxes are proposals for --text")
    box = args.box[0] if args.box else None
    if not points and box is None:
        raise InputError("segment needs a prompt: give --point X,Y (repeatable), --negative X,Y or --box X0,Y0,X1,Y1")
    image = load_image(args.image)
    predictor.set_image(image)
    result = predictor.predict(points=points or None, labels=labels or None, box=box, multimask=not args.single)
    best = int(np.argmax(result.scores))
    save_mask(result.masks[best], args.out)
    picture = args.out.with_name(args.out.stem + ".overlay.png")
    overlay(image, [result.masks[best]], points=points, labels=labels, box=box).save(picture)
    print(f"mask {args.out} ({int(result.masks[best].sum())} pixels, predicted IoU {result.scores[best]:.3f}); "
          f"overlay {picture}")


def _segment_text(predictor: SamPredictor, args) -> None:
    from ..overlay import overlay, save_mask
    from ..pipeline import load

    if args.text is None or args.clip is None:
        raise InputError("a text prompt needs both --text 'WHAT' and --clip CLIP_BUNDLE (the bundle that scores "
                         "SAM's masks against the text)")
    if args.point or args.negative:
        raise InputError("--text takes no points: its proposals are SAM's automatic masks, or the masks of --box ...")
    clip = load(args.clip, threads=args.threads, providers=args.providers)
    if clip.family != "clip":
        raise InputError(f"--clip {args.clip} is a {clip.family} bundle: give a CLIP bundle (edgevfm export a CLIP model)")
    image = load_image(args.image)
    found = predictor.segment_text(image, args.text, clip, top=args.top, boxes=args.box or None,
                                   background=args.background,
                                   **({} if args.box else {"pred_iou_thresh": args.pred_iou_thresh,
                                                           "stability_score_thresh": args.stability_thresh}))
    if not found:
        raise InputError(f"no mask proposal passed SAM's filters (predicted IoU > {args.pred_iou_thresh}, stability > "
                         f"{args.stability_thresh}): lower --pred-iou-thresh / --stability-thresh, or give --box")
    for rank, hit in enumerate(found, 1):
        path = args.out if rank == 1 else args.out.with_name(f"{args.out.stem}.{rank}.png")
        save_mask(hit.mask, path)
        print(f"{rank}. {path}: CLIP score {hit.clip_score:.4f} (probability {hit.probability:.3f}), predicted IoU "
              f"{hit.predicted_iou:.3f}, {int(hit.mask.sum())} pixels, box {[round(v) for v in hit.box]}")
    picture = args.out.with_name(args.out.stem + ".overlay.png")
    overlay(image, [found[0].mask], box=found[0].box).save(picture)
    print(f"overlay {picture}")


def _masks_arguments(parser) -> None:
    from pathlib import Path

    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--out", type=new_folder, default=Path("masks"),
                        help="folder for masks.json, overlay.png, mask_*.png")
    parser.add_argument("--points-per-side", type=int, choices=range(1, MAX_POINTS_PER_SIDE + 1), default=16,
                        metavar=f"1..{MAX_POINTS_PER_SIDE}")
    parser.add_argument("--points-per-batch", type=positive_int, default=64)
    parser.add_argument("--pred-iou-thresh", type=finite_float, default=0.88)
    parser.add_argument("--stability-thresh", type=finite_float, default=0.95)
    parser.add_argument("--crop-layers", type=int, choices=range(MAX_CROP_LAYERS + 1), default=0,
                        metavar=f"0..{MAX_CROP_LAYERS}", help="crop layers (0: none; layer n adds 4^n crops)")


def _masks(predictor: SamPredictor, args) -> None:
    import json

    from ..masks import mask_to_rle
    from ..overlay import overlay, save_mask

    image = load_image(args.image)
    found = predictor.generate(image, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                               pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh,
                               crop_n_layers=args.crop_layers)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(found):
        save_mask(m["segmentation"], args.out / f"mask_{i:03d}.png")
    records = [dict(m, segmentation=mask_to_rle(m["segmentation"])) for m in found]
    (args.out / "masks.json").write_text(json.dumps(records))
    overlay(image, [m["segmentation"] for m in found]).save(args.out / "overlay.png")
    print(f"{len(found)} masks in {args.out} (masks.json as COCO RLE, overlay.png)")


register_task(Task("segment", ("sam",), "mask for points and/or a box, or for --text with a --clip bundle; writes "
                   "the mask and an overlay PNG",
                   _segment_arguments, _segment))
register_task(Task("masks", ("sam",), "automatic masks for everything in IMAGE", _masks_arguments, _masks))
