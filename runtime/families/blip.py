"""BLIP on the shared generation engine: what every BLIP bundle shares (the ``vision`` part, the
tokenizer, the manifest's ``text`` section), and the pipeline of each task in a file of its own:
captioning (:mod:`.blip_caption`), visual question answering (:mod:`.blip_vqa`) and image-text
retrieval (:mod:`.blip_retrieval`). :func:`edgevfm.runtime.load` opens a BLIP bundle with its
task's pipeline (the manifest's ``task``); a call of another task's is a ``UsageError`` that says
which checkpoint to export for it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..decoders import kv_decoder
from ..errors import InputError, UsageError
from ..image import PREPROCESSING, preprocess
from ..pipeline import PIPELINES, Pipeline
from ..sampling import GenerationConfig
from ..schema import integer, listed_file, obj, string

_ID = integer(0, 1 << 24)
CAPTION_TOKENS, ANSWER_TOKENS = 30, 10  # default max_new_tokens: answers are short
TASKS = ("caption", "vqa", "retrieval")
# {task: its pipeline}, filled by the task files
TASK_PIPELINES: dict[str, type] = {}
# the calls of each task, and what to export for it (the error for a bundle of another task)
TASK_CALLS = {
    "caption": (("caption", "caption_batch", "caption_tokens", "image_decoder"), "caption images",
                "BlipForConditionalGeneration, e.g. Salesforce/blip-image-captioning-base (offline: the preset "
                "trained:blip-shapes)"),
    "vqa": (("answer", "answer_tokens", "question_decoder"), "answer questions",
            "BlipForQuestionAnswering, e.g. Salesforce/blip-vqa-base (offline: the preset trained:blip-vqa-shapes or "
            "random:blip-vqa-tiny)"),
    "retrieval": (("match", "image_features", "image_features_of", "text_features", "retrieve", "embedders"),
                  "match images and texts", "BlipForImageTextRetrieval, e.g. Salesforce/blip-itm-base-coco (offline: "
                  "the preset trained:blip-itm-shapes)"),
}


def task_pipeline(task: str):
    """Register a BLIP task's pipeline class."""
    def add(cls):
        cls.task = task
        TASK_PIPELINES[task] = cls
        return cls

    return add


@PIPELINES.register("blip")
class BlipPipeline(Pipeline):
    family = "blip"
    needs = {"vision": (("pixel_values",), ("image_embeds",))}  # and the task's parts: check_consistency
    task: ClassVar[str | None] = None
    task_parts: ClassVar[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}  # the task's parts, as ``needs``
    manifest_schema = {
        "task": string(choices=TASKS),
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file()}),
        "text": obj({"context_length": integer(1, 1 << 20)},
                    {"num_layers": integer(1, 1024), "heads": integer(1, 1024), "head_dim": integer(1, 4096),
                     "vocab_size": integer(1, 1 << 24), "bos_token_id": _ID, "sep_token_id": _ID,
                     "pad_token_id": _ID}),
    }

    @classmethod
    def variant(cls, manifest) -> type:
        task = manifest.get("task") if isinstance(manifest, dict) else None
        return TASK_PIPELINES.get(task, cls) if isinstance(task, str) else cls

    @classmethod
    def check_consistency(cls, manifest):
        task = manifest["task"]
        problems = []
        for name, (inputs, outputs) in TASK_PIPELINES[task].task_parts.items():
            parts = manifest["parts"]
            if name not in parts:
                problems.append(f"part {name!r} is missing: a BLIP {task} bundle needs "
                                f"{sorted(TASK_PIPELINES[task].task_parts)}")
                continue
            have_in = {t["name"] for t in parts[name]["inputs"]}
            have_out = {t["name"] for t in parts[name]["outputs"]}
            problems += [f"part {name!r} lacks input {i!r} (a BLIP {task} bundle feeds it)" for i in inputs
                         if i not in have_in]
            problems += [f"part {name!r} lacks output {o!r} (a BLIP {task} bundle reads it)" for o in outputs
                         if o not in have_out]
        return problems + TASK_PIPELINES[task].check_text(manifest)

    @classmethod
    def check_text(cls, manifest) -> list[str]:
        """What the task needs of the manifest's ``text`` section beyond the schema."""
        return []

    def setup(self):
        from tokenizers import Tokenizer

        settings = self.manifest["tokenizer"]
        try:
            self.tokenizer = Tokenizer.from_file(str(self.bundle.file(settings["file"])))
        except Exception as exc:
            raise ValueError(f"its tokenizer file {settings['file']!r} cannot be read ({exc})") from None
        self.text = self.manifest["text"]

    def __getattr__(self, name: str):
        """Another task's call: a ``UsageError`` that names the checkpoint to export for it."""
        for task, (calls, what, kind) in TASK_CALLS.items():
            if name in calls and task != self.task:
                def refuse(*args, **kwargs):
                    raise UsageError(f"this BLIP bundle's task is {self.task!r}: to {what}, export a {kind}")

                return refuse
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def image_embeds(self, images) -> np.ndarray:
        pixels = preprocess(list(images), self.manifest["preprocessing"])
        return self.run("vision", {"pixel_values": pixels})["image_embeds"]

    def encode(self, text: str, what: str) -> np.ndarray:
        """``[CLS] text [SEP]`` ids (1, length), or an ``InputError`` for an empty or too long text."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"a {what} must be a non-empty string, found {text!r}")
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.text["context_length"]:
            raise InputError(f"the {what} has {len(ids)} tokens: {len(ids) - self.text['context_length']} over the "
                             f"model's context of {self.text['context_length']}; shorten it")
        return np.asarray([ids], np.int64)


class BlipDecoding(BlipPipeline):
    """The generating tasks (captions, answers): a text decoder with a KV cache, attending to
    cross-attention keys and values (``cross_kv``) computed once per image (or question) and bound
    to the decoder as constants; it takes token ids (it embeds them itself)."""

    DECODER_KEYS = ("num_layers", "heads", "head_dim", "vocab_size", "bos_token_id", "sep_token_id", "pad_token_id")

    @classmethod
    def check_text(cls, manifest) -> list[str]:
        return [f"manifest.text lacks {key!r} (a {manifest['task']} bundle's decoder needs it)" for key in cls.DECODER_KEYS
                if key not in manifest["text"]]

    def setup(self):
        super().setup()
        text = self.text
        self.decoder = kv_decoder(self.parts["text_decoder"], text["num_layers"], text["heads"], text["head_dim"],
                                  token_input="input_ids")
        self.generation = GenerationConfig(max_new_tokens=CAPTION_TOKENS, stop_token_ids=(text["sep_token_id"],),
                                           fit_context=True)

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """``[DEC]`` and the prompt's tokens (no ``[CLS]``/``[SEP]``), as transformers feeds the decoder."""
        if prompt is None:
            return [self.text["bos_token_id"]]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"a caption prompt must be a non-empty string or None, found {prompt!r}")
        return [self.text["bos_token_id"]] + self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def attending_to(self, states: dict[str, np.ndarray]):
        """The text decoder bound to the cross-attention keys and values ``cross_kv`` makes of ``states``."""
        cross = self.run("cross_kv", states)
        names = [f"cross_{kv}.{i}" for i in range(self.text["num_layers"]) for kv in ("key", "value")]
        return self.decoder.with_constants({name: cross[name] for name in names})
