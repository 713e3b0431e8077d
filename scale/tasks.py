"""What ``edgevfm batch`` can do with a bundle, one ``BatchTask`` per TASK: which pipelines take it,
the columns it writes, and the work on a batch of decoded images. Each task calls the pipelines'
public API, so a row equals what the Python API returns for that image.

A task's ``setup`` runs once per worker (text embeddings of the labels, say) and its ``run`` takes
the worker's state, the images and the rows' texts and returns one dict of column values per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from edgevfm.runtime.errors import InputError
from edgevfm.runtime.registry import Registry

CAPTIONER, FILTER = "bundle", "filter"  # capfilt's two bundles: BUNDLE captions, --filter judges


@dataclass(frozen=True)
class BatchTask:
    name: str
    help: str
    takes: str  # which bundles, for the error that refuses another
    accepts: Callable[[Any], bool]  # a pipeline this task can run on
    columns: dict[str, pa.DataType]
    run: Callable[[dict, list, list, dict], list[dict]]  # (state, images, texts, options) -> rows
    setup: Callable[[dict, dict], dict] = lambda pipelines, options: dict(pipelines)
    bundles: tuple[str, ...] = (CAPTIONER,)  # option names of the bundles it loads
    needs_text: bool = False  # reads each row's text (when no option gives one)
    options: dict = field(default_factory=dict)


TASKS: Registry[BatchTask] = Registry("batch task")


def register(task: BatchTask) -> BatchTask:
    return TASKS.register(task.name)(task)


def check_pipeline(task: BatchTask, pipeline: type, path, family: str, role: str = CAPTIONER) -> None:
    """An ``InputError`` when ``task`` cannot run on a ``pipeline`` class (in the job's ``role``)."""
    fits = task.accepts(pipeline) if role == CAPTIONER else hasattr(pipeline, "match")
    if not fits:
        takes = task.takes if role == CAPTIONER else "--filter: a BLIP retrieval bundle (its ITM head)"
        raise InputError(f"task {task.name!r} takes {takes}; {str(path)!r} is a {family} bundle "
                         f"({pipeline.__name__}): pass a bundle that can, or choose another task")


# --- embed ------------------------------------------------------------------------------------------

def _embedder(pipeline):
    return getattr(pipeline, "embed_images", None) or getattr(pipeline, "image_features", None)


def _embed(state, images, texts, options):
    vectors = _embedder(state[CAPTIONER])(images)
    return [{"embedding": v.astype(np.float32)} for v in vectors]


register(BatchTask("embed", "image embeddings (CLIP: unit image embeddings; a BLIP retrieval bundle: its ITC features)",
                   "a CLIP or a BLIP retrieval bundle", lambda p: _embedder(p) is not None and not hasattr(p, "caption"),
                   {"embedding": pa.list_(pa.float32())}, _embed))


# --- classify ---------------------------------------------------------------------------------------

def _classify_setup(pipelines, options):
    clip = pipelines[CAPTIONER]
    return {**pipelines, "labels": list(options["labels"]), "texts": clip.embed_texts(list(options["labels"]))}


def _classify(state, images, texts, options):
    labels = state["labels"]
    rows = []
    for p in state[CAPTIONER].label_probabilities(images, labels, state["texts"]):
        best = int(np.argsort(-p, kind="stable")[0])
        rows.append({"label": labels[best], "score": float(p[best]), "scores": p.astype(np.float32)})
    return rows


register(BatchTask("classify", "zero-shot classification among --labels (scores in the labels' order)",
                   "a CLIP bundle", lambda p: hasattr(p, "classify"),
                   {"label": pa.string(), "score": pa.float32(), "scores": pa.list_(pa.float32())},
                   _classify, setup=_classify_setup))


# --- caption and ask --------------------------------------------------------------------------------

def _generation(options) -> dict:
    return {k: options[k] for k in ("max_new_tokens", "num_beams") if options.get(k) is not None}


def _caption(state, images, texts, options):
    captions = state[CAPTIONER].caption_batch(images, options.get("prompt"), **_generation(options))
    return [{"caption": c} for c in captions]


register(BatchTask("caption", "a caption per image", "a BLIP captioning or a BLIP-2 bundle",
                   lambda p: hasattr(p, "caption_batch"), {"caption": pa.string()}, _caption))


def _ask(state, images, texts, options):
    pipeline = state[CAPTIONER]
    questions = [options.get("question") or text for text in texts]
    for q in questions:
        if not q:
            raise InputError("a row has no question: pass --question, or give every row a text")
    return [{"question": q, "answer": pipeline.answer(image, q, **_generation(options))}
            for image, q in zip(images, questions)]


register(BatchTask("ask", "an answer per image to --question (or to each row's text)",
                   "a BLIP VQA, BLIP-2 or LLaVA bundle", lambda p: hasattr(p, "answer"),
                   {"question": pa.string(), "answer": pa.string()}, _ask, needs_text=True))


# --- masks ------------------------------------------------------------------------------------------

MASK_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh")


def _masks(state, images, texts, options):
    predictor = state[CAPTIONER]
    settings = {k: options[k] for k in MASK_OPTIONS if options.get(k) is not None}
    rows = []
    for image in images:
        masks = predictor.generate(image, output_mode="coco_rle", **settings)
        records = [{"segmentation": m["segmentation"], "area": m["area"], "bbox": m["bbox"],
                    "predicted_iou": float(m["predicted_iou"]), "stability_score": float(m["stability_score"])}
                   for m in masks]
        rows.append({"count": len(records), "masks": json.dumps(records)})
    return rows


register(BatchTask("masks", "SAM's automatic masks: COCO RLE, box, area and scores as JSON per image",
                   "a SAM bundle", lambda p: hasattr(p, "generate") and hasattr(p, "set_image"),
                   {"count": pa.int32(), "masks": pa.string()}, _masks))


# --- capfilt ----------------------------------------------------------------------------------------

def _capfilt(state, images, texts, options):
    captioner, judge, threshold = state[CAPTIONER], state[FILTER], options["threshold"]
    captions = captioner.caption_batch(images, options.get("prompt"), **_generation(options))
    rows = []
    for image, caption, text in zip(images, captions, texts):
        synthetic = judge.match(image, caption)["itm"]
        original = judge.match(image, text)["itm"] if text else None
        rows.append({"caption": caption, "caption_itm": synthetic, "caption_kept": synthetic >= threshold,
                     "text": text, "text_itm": original,
                     "text_kept": None if original is None else original >= threshold})
    return rows


register(BatchTask("capfilt", "BLIP's CapFilt: BUNDLE captions each image, --filter's ITM head keeps the captions "
                   "(and the rows' own texts) scoring at least --threshold",
                   "a BLIP captioning bundle, with --filter a BLIP retrieval bundle",
                   lambda p: hasattr(p, "caption_batch"),
                   {"caption": pa.string(), "caption_itm": pa.float32(), "caption_kept": pa.bool_(),
                    "text": pa.string(), "text_itm": pa.float32(), "text_kept": pa.bool_()},
                   _capfilt, bundles=(CAPTIONER, FILTER), needs_text=True))
