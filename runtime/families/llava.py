"""LLaVA: visual chat on a three-part bundle (``vision``, ``embed``, ``llm``) and the shared
generation engine (:mod:`..generate`).

A prompt is the bundle's chat template rendered (jinja2, sandboxed: the template is data from the
bundle), tokenized, each image token expanded to ``image_seq_length`` copies and their embeddings
replaced by the image's features, exactly as transformers' LlavaProcessor and model do.

Threads: the pipeline holds no per-call state and may serve many threads; a :class:`Chat` is one
conversation and belongs to one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..generate import (GenerationConfig, Session, check_prompt_fits, decoder_for, first_stop, generate,
                        generate_tokens, stream_text)
from ..image import PREPROCESSING, ImageLike, output_size, preprocess
from ..pipeline import PIPELINES, Pipeline, declared, mismatch
from ..schema import integer, list_of, listed_file, nullable, obj, string
from ..tasks import Task, decoding_arguments, finite_float, register_task

_ID = integer(0, 1 << 24)
_SIZE = integer(1, 1 << 20)


@dataclass
class Chat:
    """One conversation about (at most) one image. ``send`` adds a user turn and the model's
    answer to the history; a new ``LlavaPipeline.chat(...)`` starts with none."""

    pipeline: "LlavaPipeline"
    image: ImageLike | None = None
    system: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    history: list[dict] = field(default_factory=list)
    _features: np.ndarray | None = None
    # the KV cache of the turns so far: a new turn prefills only what its prompt adds
    session: Session = field(default_factory=Session)

    def send(self, text: str, stream: bool = False, **generation) -> str | Iterator[str]:
        """The answer to ``text`` (with the image in the first turn), or with ``stream`` an
        iterator of text pieces; either way the turn joins the history."""
        config = self.generation.with_options(**generation)
        user = message("user", text, with_image=self.image is not None and not self.history)
        messages = ([message("system", self.system)] if self.system else []) + self.history + [user]
        if self.image is not None and self._features is None:
            self._features = self.pipeline.image_features([self.image])
        prompt = self.pipeline.prompt(messages, self._features)
        pieces = self.pipeline._stream(prompt, config, self.session)
        if stream:
            return self._record(user, pieces)
        return "".join(self._record(user, pieces))

    def _record(self, user: dict, pieces: Iterator[str]) -> Iterator[str]:
        said = []
        try:
            for piece in pieces:
                said.append(piece)
                yield piece
        finally:
            self.history += [user, {"role": "assistant", "content": [{"type": "text", "text": "".join(said)}]}]


def message(role: str, text: str, with_image: bool = False) -> dict:
    """A chat message as templates take it: {"role", "content": [{"type": "image"}?, {"type": "text"}]}."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"a {role} message must be a non-empty string, found {text!r}")
    return {"role": role, "content": ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]}


@dataclass(frozen=True)
class Prompt:
    """A rendered, tokenized prompt: ``ids`` with image tokens expanded, ``embeds`` (S, H)."""

    ids: list[int]
    embeds: np.ndarray


@PIPELINES.register("llava")
class LlavaPipeline(Pipeline):
    family = "llava"
    needs = {
        "vision": (("pixel_values",), ("image_features",)),
        "embed": (("input_ids",), ("inputs_embeds",)),
        "llm": (("inputs_embeds", "attention_mask"), ("logits",)),
    }
    manifest_schema = {
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file()}, {"bos_token": nullable(string()),
                                                             "eos_token": nullable(string())}),
        "chat": obj({"template": string(max_length=100_000), "image_token": string(), "image_token_id": _ID,
                     "image_seq_length": _SIZE, "stop_token_ids": list_of(_ID, max_items=16)}),
        "llm": obj({"num_layers": integer(1, 1024), "kv_heads": integer(1, 1024), "head_dim": integer(1, 4096),
                    "hidden_size": _SIZE, "vocab_size": _SIZE, "context_length": _SIZE}),
    }
    generation = GenerationConfig(max_new_tokens=256)

    @classmethod
    def check_consistency(cls, manifest):
        llm, chat = manifest["llm"], manifest["chat"]
        inputs = {t["name"] for t in manifest["parts"]["llm"]["inputs"]}
        decoder = decoder_for(None, inputs, llm["num_layers"], llm["kv_heads"], llm["head_dim"])
        features = declared(manifest, "vision", "image_features")["shape"]
        return (mismatch("the llm part's past inputs (layers) against llm.num_layers", sorted(decoder.past_names),
                         sorted(inputs - {"inputs_embeds", "attention_mask", "position_ids"}))
                + mismatch("the vision part's image_features (tokens, hidden) against chat.image_seq_length and "
                           "llm.hidden_size", [chat["image_seq_length"], llm["hidden_size"]], features[1:])
                + mismatch("preprocessing makes images of (height, width), the vision part takes pixel_values of",
                           declared(manifest, "vision", "pixel_values")["shape"][2:],
                           output_size(manifest["preprocessing"]) or ("any",)))

    def setup(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        settings, chat, llm = self.manifest["tokenizer"], self.manifest["chat"], self.manifest["llm"]
        try:
            self.tokenizer = Tokenizer.from_file(str(self.bundle.file(settings["file"])))
        except Exception as exc:
            raise ValueError(f"its tokenizer file {settings['file']!r} cannot be read ({exc})") from None
        self.template = ImmutableSandboxedEnvironment(trim_blocks=False).from_string(chat["template"])
        self.image_token_id, self.image_seq_length = chat["image_token_id"], chat["image_seq_length"]
        self.context_length = llm["context_length"]
        inputs = [t["name"] for t in self.manifest["parts"]["llm"]["inputs"]]
        self.decoder = decoder_for(self.parts["llm"], inputs, llm["num_layers"], llm["kv_heads"], llm["head_dim"])
        self.generation = GenerationConfig(max_new_tokens=256, stop_token_ids=tuple(chat["stop_token_ids"]))

    # -- conversations -------------------------------------------------------------------------
    def chat(self, image: ImageLike | None = None, system: str | None = None, **generation) -> Chat:
        """A new conversation (no history) about ``image``: path, PIL image or HWC uint8 array."""
        return Chat(self, image, system, self.generation.with_options(**generation))

    def answer(self, image: ImageLike | None, question: str, **generation) -> str:
        """One question, one answer, no history."""
        return self.chat(image, **generation).send(question)

    def answer_batch(self, images: Sequence[ImageLike], questions: Sequence[str], **generation) -> list[str]:
        """One answer per (image, question), decoded together as one left-padded batch."""
        if len(images) != len(questions) or not questions:
            raise InputError(f"answer_batch needs as many images as questions (at least one), found "
                             f"{len(images)} and {len(questions)}")
        config = self.generation.with_options(**generation)
        prompts = [self.prompt([message("user", q, with_image=True)], self.image_features([im]))
                   for im, q in zip(images, questions)]
        for p in prompts:
            check_prompt_fits(len(p.ids), config.max_new_tokens, self.context_length)
        result = generate(self.decoder, self.embed, [p.embeds for p in prompts], [p.ids for p in prompts], config,
                          self._stop_check(config))
        return [self.decode_text(tokens, config) for tokens in result.tokens]

    # -- the pieces -----------------------------------------------------------------------------
    def image_inputs(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images -> the vision part's pixel_values (N, 3, S, S) float32."""
        return preprocess(list(images), self.manifest["preprocessing"])

    def image_features(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(images, image_seq_length, hidden) float32 features, the vision part's output."""
        return self.run("vision", {"pixel_values": self.image_inputs(images)})["image_features"]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token ids (B, S) int64 -> (B, S, hidden) float32."""
        return self.run("embed", {"input_ids": np.asarray(ids, np.int64)})["inputs_embeds"]

    def render(self, messages: list[dict]) -> str:
        """The chat template applied to ``messages``, ending with the assistant's cue."""
        settings = self.manifest["tokenizer"]
        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=settings.get("bos_token") or "",
                                        eos_token=settings.get("eos_token") or "")
        except Exception as exc:  # the template is data from the bundle: sandboxed, and any failure typed
            raise InputError(f"the bundle's chat template cannot render these messages ({exc})") from None

    def prompt(self, messages: list[dict], features: np.ndarray | None) -> Prompt:
        """Render, tokenize, expand image tokens and merge the image ``features`` (N, T, H)."""
        ids = self.tokenizer.encode(self.render(messages)).ids
        slots = [i for i, t in enumerate(ids) if t == self.image_token_id]
        images = 0 if features is None else len(features)
        if len(slots) != images:
            raise InputError(f"the prompt has {len(slots)} image token(s) and {images} image(s): give one image "
                             "per image token (more images than image tokens cannot be placed)")
        expanded: list[int] = []
        for t in ids:
            expanded += [t] * (self.image_seq_length if t == self.image_token_id else 1)
        embeds = self.embed(np.asarray([expanded]))[0]
        if images:
            embeds[np.asarray(expanded) == self.image_token_id] = features.reshape(-1, features.shape[-1])
        return Prompt(expanded, embeds)

    def decode_text(self, tokens: list[int], config: GenerationConfig) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = first_stop(text, config.stop_strings)
        return text if cut is None else text[:cut]

    def _stop_check(self, config: GenerationConfig):
        if not config.stop_strings:
            return None
        return lambda row, tokens: first_stop(self.tokenizer.decode(tokens, skip_special_tokens=True),
                                              config.stop_strings) is not None

    def _stream(self, prompt: Prompt, config: GenerationConfig, session: Session | None = None) -> Iterator[str]:
        check_prompt_fits(len(prompt.ids), config.max_new_tokens, self.context_length)
        if config.num_beams > 1:  # beam search picks the answer at the end: one piece
            if session is not None:
                session.ids, session.cache = [], None  # its cache held other beams: start afresh next turn
            tokens = generate(self.decoder, self.embed, [prompt.embeds], [prompt.ids], config).tokens[0]
            return iter([self.decode_text(tokens, config)])
        steps = generate_tokens(self.decoder, self.embed, [prompt.embeds], [prompt.ids], config,
                                self._stop_check(config), session)
        tokens = (picked[0] for picked in steps if picked[0] is not None)
        return stream_text(tokens, lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                           config.stop_strings)


# -- the command line -------------------------------------------------------------------------
def _chat_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", nargs="?", help="the image to talk about (optional)")
    parser.add_argument("--prompt", help="ask this once and print the answer (no standard input needed)")
    decoding_arguments(parser, max_new_tokens=256)
    parser.add_argument("--temperature", type=finite_float, help="sample at this temperature (default: greedy)")
    parser.add_argument("--top-p", type=finite_float)
    parser.add_argument("--seed", type=int, help="seed for sampling, for reproducible answers")


def _chat(pipeline: LlavaPipeline, args) -> None:
    import sys

    options = {"max_new_tokens": args.max_new_tokens, "seed": args.seed, "num_beams": args.beams}
    if args.temperature is not None or args.top_p is not None:
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    chat = pipeline.chat(args.image, **options)
    if args.prompt is not None:
        _say(chat.send(args.prompt, stream=True))
        return
    print("chat: type a message; /new starts a new conversation, /quit (or end of input) leaves", file=sys.stderr)
    for line in sys.stdin:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text == "/new":
            chat = pipeline.chat(args.image, **options)
            print("(new conversation)", file=sys.stderr)
        elif text:
            _say(chat.send(text, stream=True))


def _say(pieces: Iterator[str]) -> None:
    for piece in pieces:
        print(piece, end="", flush=True)
    print()


register_task(Task("chat", "llava", "chat about IMAGE: streams answers; --prompt for one answer", _chat_arguments,
                   _chat))
