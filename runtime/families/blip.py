"""BLIP captioning on a three-part bundle (``vision``, ``cross_kv``, ``text_decoder``) and the
shared generation engine (work in progress: VQA, ITM/ITC and retrieval still to come).

The image's cross-attention keys and values are computed once (``cross_kv``) and bound to the
decoder as constants for the whole caption; the decoder takes token ids (it embeds them itself).
A caption starts with ``[DEC]`` (the decoder's start token) and an optional prompt, as
transformers' ``BlipForConditionalGeneration.generate`` does, and ends at ``[SEP]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError, UsageError
from ..decoders import kv_decoder
from ..generate import generate
from ..sampling import GenerationConfig, fitted, softmax
from ..image import PREPROCESSING, ImageLike, preprocess
from ..pipeline import PIPELINES, Pipeline
from ..retrieval import Match, rank
from ..schema import integer, listed_file, obj, string
from ..tasks import Task, decoding_arguments, decoding_options, nonempty_text, register_task

_ID = integer(0, 1 << 24)
CAPTION_TOKENS, ANSWER_TOKENS = 30, 10  # default max_new_tokens: answers are short


@PIPELINES.register("blip")
class BlipPipeline(Pipeline):
    family = "blip"
    needs = {"vision": (("pixel_values",), ("image_embeds",))}  # the rest depends on the task: check_consistency
    # each task's parts: (inputs, outputs) as ``needs``
    TASK_PARTS = {
        "caption": {"cross_kv": (("image_embeds",), ()),
                    "text_decoder": (("input_ids", "attention_mask", "position_ids"), ("logits",))},
        "vqa": {"question": (("input_ids", "attention_mask", "image_embeds"), ("question_embeds",)),
                "cross_kv": (("question_embeds",), ()),
                "text_decoder": (("input_ids", "attention_mask", "position_ids"), ("logits",))},
        "retrieval": {"itm": (("input_ids", "attention_mask", "image_embeds"), ("itm_logits",)),
                      "image_proj": (("image_embeds",), ("image_feat",)),
                      "text_proj": (("input_ids", "attention_mask"), ("text_feat",))},
    }
    DECODER_KEYS = ("num_layers", "heads", "head_dim", "vocab_size", "bos_token_id", "sep_token_id", "pad_token_id")
    manifest_schema = {
        "task": string(choices=tuple(TASK_PARTS)),
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file()}),
        "text": obj({"context_length": integer(1, 1 << 20)},
                    {"num_layers": integer(1, 1024), "heads": integer(1, 1024), "head_dim": integer(1, 4096),
                     "vocab_size": integer(1, 1 << 24), "bos_token_id": _ID, "sep_token_id": _ID,
                     "pad_token_id": _ID}),
    }

    @classmethod
    def check_consistency(cls, manifest):
        parts, task = manifest["parts"], manifest["task"]
        problems = []
        for name, (inputs, outputs) in cls.TASK_PARTS[task].items():
            if name not in parts:
                problems.append(f"part {name!r} is missing: a BLIP {task} bundle needs {sorted(cls.TASK_PARTS[task])}")
                continue
            have_in = {t["name"] for t in parts[name]["inputs"]}
            have_out = {t["name"] for t in parts[name]["outputs"]}
            problems += [f"part {name!r} lacks input {i!r} (a BLIP {task} bundle feeds it)" for i in inputs
                         if i not in have_in]
            problems += [f"part {name!r} lacks output {o!r} (a BLIP {task} bundle reads it)" for o in outputs
                         if o not in have_out]
        if task != "retrieval":
            problems += [f"manifest.text lacks {key!r} (a {task} bundle's decoder needs it)" for key in cls.DECODER_KEYS
                         if key not in manifest["text"]]
        return problems

    def setup(self):
        from tokenizers import Tokenizer

        settings, text = self.manifest["tokenizer"], self.manifest["text"]
        try:
            self.tokenizer = Tokenizer.from_file(str(self.bundle.file(settings["file"])))
        except Exception as exc:
            raise ValueError(f"its tokenizer file {settings['file']!r} cannot be read ({exc})") from None
        self.text = text
        if self.manifest["task"] == "retrieval":
            return
        self.decoder = kv_decoder(self.parts["text_decoder"], text["num_layers"], text["heads"], text["head_dim"],
                                  token_input="input_ids")
        self.generation = GenerationConfig(max_new_tokens=CAPTION_TOKENS, stop_token_ids=(text["sep_token_id"],),
                                           fit_context=True)

    def image_embeds(self, images) -> np.ndarray:
        pixels = preprocess(list(images), self.manifest["preprocessing"])
        return self.run("vision", {"pixel_values": pixels})["image_embeds"]

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """``[DEC]`` and the prompt's tokens (no ``[CLS]``/``[SEP]``), as transformers feeds the decoder."""
        if prompt is None:
            return [self.text["bos_token_id"]]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"a caption prompt must be a non-empty string or None, found {prompt!r}")
        return [self.text["bos_token_id"]] + self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def caption(self, image: ImageLike, prompt: str | None = None, **generation) -> str:
        """The caption of ``image`` (continuing ``prompt`` if given; the prompt is part of the text,
        as transformers decodes it): greedy by default, ``do_sample``/``num_beams`` as the engine."""
        return self.caption_batch([image], prompt, **generation)[0]

    def caption_batch(self, images, prompt: str | None = None, **generation) -> list[str]:
        captions = self.caption_tokens(images, prompt, **generation)
        start = self.prompt_ids(prompt)[1:]  # the prompt is part of the caption, as transformers decodes it
        return [self.tokenizer.decode(start + tokens, skip_special_tokens=True) for tokens in captions]

    def caption_tokens(self, images, prompt: str | None = None, **generation) -> list[list[int]]:
        """The generated token ids of each image's caption (the prompt's and ``[SEP]`` excluded)."""
        self._need("caption", "caption images", "BlipForConditionalGeneration, e.g. "
                   "Salesforce/blip-image-captioning-base")
        config = self.generation.with_options(**generation)
        ids = self.prompt_ids(prompt)
        config = fitted(config, len(ids), self.text["context_length"])
        prompts = [np.asarray(ids, np.int64)] * len(images)
        result = generate(self.image_decoder(images), lambda tokens: tokens, prompts, [ids] * len(images), config)
        return result.tokens

    def image_decoder(self, images):
        """The text decoder bound to these images' cross-attention keys and values (one per row)."""
        return self._attending_to({"image_embeds": self.image_embeds(images)})

    def _attending_to(self, states: dict[str, np.ndarray]):
        """The text decoder bound to the cross-attention keys and values ``cross_kv`` makes of ``states``."""
        cross = self.run("cross_kv", states)
        names = [f"cross_{kv}.{i}" for i in range(self.text["num_layers"]) for kv in ("key", "value")]
        return self.decoder.with_constants({name: cross[name] for name in names})

    def answer(self, image: ImageLike, question: str, **generation) -> str:
        """The answer to ``question`` about ``image`` (a VQA bundle): the question is encoded
        against the image, and the answer decoded against the question, as transformers'
        ``BlipForQuestionAnswering.generate`` does."""
        return self.tokenizer.decode(self.answer_tokens(image, question, **generation), skip_special_tokens=True)

    def answer_tokens(self, image: ImageLike, question: str, **generation) -> list[int]:
        config = self.generation.with_options(max_new_tokens=ANSWER_TOKENS, fit_context=True).with_options(**generation)
        config = fitted(config, 1, self.text["context_length"])
        start = [self.text["bos_token_id"]]
        return generate(self.question_decoder(image, question), lambda tokens: tokens, [np.asarray(start, np.int64)],
                        [start], config).tokens[0]

    def question_decoder(self, image: ImageLike, question: str):
        """The answer decoder bound to ``question`` encoded against ``image`` (a VQA bundle)."""
        self._need("vqa", "answer questions", "BlipForQuestionAnswering, e.g. Salesforce/blip-vqa-base (offline: "
                   "the preset random:blip-vqa-tiny)")
        ids = self._encode(question, "question")
        states = self.run("question", {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                       "image_embeds": self.image_embeds([image])})["question_embeds"]
        return self._attending_to({"question_embeds": states})

    # -- image-text matching (ITM) and contrastive similarity (ITC) --------------------------------
    def match(self, image: ImageLike, text: str) -> dict[str, float]:
        """How well ``text`` describes ``image`` (a retrieval bundle): ``itm`` the matching head's
        probability of a match, ``itc`` the cosine of the contrastive features."""
        self._need("retrieval", "match images and texts", "BlipForImageTextRetrieval, e.g. "
                   "Salesforce/blip-itm-base-coco")
        ids = self._encode(text, "text")
        embeds = self.image_embeds([image])
        logits = self.run("itm", {"input_ids": ids, "attention_mask": np.ones_like(ids), "image_embeds": embeds})
        probability = softmax(logits["itm_logits"].astype(np.float64))[0, 1]
        similarity = float(self._text_feature(ids) @ self.image_features_of(embeds)[0])
        return {"itm": float(probability), "itc": similarity}

    def image_features(self, images) -> np.ndarray:
        """(N, projection) unit ITC features of images."""
        self._need("retrieval", "embed images for retrieval", "BlipForImageTextRetrieval")
        return self.image_features_of(self.image_embeds(images))

    def image_features_of(self, embeds: np.ndarray) -> np.ndarray:
        return self.run("image_proj", {"image_embeds": embeds})["image_feat"]

    def text_features(self, texts) -> np.ndarray:
        """(N, projection) unit ITC features of texts (each alone: no padding to another's length)."""
        self._need("retrieval", "embed texts for retrieval", "BlipForImageTextRetrieval")
        return np.stack([self._text_feature(self._encode(text, "text")) for text in texts])

    def _text_feature(self, ids: np.ndarray) -> np.ndarray:
        return self.run("text_proj", {"input_ids": ids, "attention_mask": np.ones_like(ids)})["text_feat"][0]

    def retrieve(self, query, gallery, k: int = 5) -> list[Match]:
        """The ``k`` best matches (index, item, ITC cosine) of ``gallery`` for ``query``: a text
        query ranks images, an image (or an image's path) ranks texts, as CLIP's retrieve."""
        return rank(query, gallery, k, self.text_features, self.image_features)

    def _encode(self, text: str, what: str) -> np.ndarray:
        """``[CLS] text [SEP]`` ids (1, length), or an ``InputError`` for an empty or too long text."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"a {what} must be a non-empty string, found {text!r}")
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.text["context_length"]:
            raise InputError(f"the {what} has {len(ids)} tokens: {len(ids) - self.text['context_length']} over the "
                             f"model's context of {self.text['context_length']}; shorten it")
        return np.asarray([ids], np.int64)

    def _need(self, task: str, what: str, kind: str) -> None:
        if self.manifest["task"] != task:
            raise UsageError(f"this BLIP bundle's task is {self.manifest['task']!r}: to {what}, export a {kind}")


# -- the command line -------------------------------------------------------------------------
def _caption_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image to caption")
    parser.add_argument("--prompt", help="the caption's start, which the model continues (\"a picture of\")")
    decoding_arguments(parser, max_new_tokens=CAPTION_TOKENS)


def _caption(pipeline, args) -> None:
    print(pipeline.caption(args.image, args.prompt, **decoding_options(args)))


def _ask_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image the question is about")
    parser.add_argument("question", metavar="QUESTION", type=nonempty_text, help="the question")
    decoding_arguments(parser, max_new_tokens=ANSWER_TOKENS)


def _ask(pipeline, args) -> None:
    print(pipeline.answer(args.image, args.question, **decoding_options(args)))


def _match_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image")
    parser.add_argument("text", metavar="TEXT", type=nonempty_text, help="the text to match against it")


def _match(pipeline: BlipPipeline, args) -> None:
    scores = pipeline.match(args.image, args.text)
    print(f"itm {scores['itm']:.4f}  itc {scores['itc']:.4f}")


register_task(Task("match", ("blip",), "how well TEXT describes IMAGE: ITM probability and ITC cosine (a retrieval "
                   "bundle)", _match_arguments, _match))
# BLIP-2's pipeline answers the same calls (runtime/families/blip2.py)
register_task(Task("ask", ("blip", "blip2"), "answer QUESTION about IMAGE (BLIP: a VQA bundle)", _ask_arguments,
                   _ask))
register_task(Task("caption", ("blip", "blip2"), "a caption of IMAGE (--prompt to start it, --beams N for beam search)",
                   _caption_arguments, _caption))
