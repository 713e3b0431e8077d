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
from ..generate import Session
from ..sampling import GenerationConfig
from ..image import PREPROCESSING, ImageLike
from ..pipeline import PIPELINES
from ..schema import integer, list_of, listed_file, nullable, obj, string
from ..tasks import Task, decoding_arguments, decoding_options, finite_float, positive_int, register_task
from ..video import FRAMES, images_of
from ..vision_lm import LLM_SECTION, Prompt, VisionLanguagePipeline

_ID = integer(0, 1 << 24)
_SIZE = integer(1, 1 << 20)


@dataclass
class Chat:
    """One conversation about an image, several (a video's frames), or none. ``send`` adds a user
    turn and the model's answer to the history; a new ``LlavaPipeline.chat(...)`` starts with none."""

    pipeline: "LlavaPipeline"
    images: list = field(default_factory=list)
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
        user = message("user", text, with_image=0 if self.history else len(self.images))
        messages = ([message("system", self.system)] if self.system else []) + self.history + [user]
        if self.images and self._features is None:
            self._features = self.pipeline.image_features(self.images)
        prompt = self.pipeline.prompt(messages, self._features)
        pieces = self.pipeline.stream(prompt, config, self.session)
        if stream:
            return self._record(user, pieces)
        return "".join(self._record(user, pieces))

    @property
    def finish_reason(self) -> str | None:
        """Why the last streamed answer ended, as OpenAI's API says it: "stop" (a stop token or
        string), "length" (cut at max_new_tokens, or where the context ended); None before any."""
        return self.session.finish_reason

    def _record(self, user: dict, pieces: Iterator[str]) -> Iterator[str]:
        said = []
        try:
            for piece in pieces:
                said.append(piece)
                yield piece
        finally:
            self.history += [user, {"role": "assistant", "content": [{"type": "text", "text": "".join(said)}]}]


def message(role: str, text: str, with_image: bool | int = False) -> dict:
    """A chat message as templates take it: {"role", "content": [{"type": "image"}..., {"type": "text"}]},
    with one image part (``with_image=True``) or that many (an int: a video's frames)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"a {role} message must be a non-empty string, found {text!r}")
    return {"role": role, "content": [{"type": "image"}] * int(with_image) + [{"type": "text", "text": text}]}


@PIPELINES.register("llava")
class LlavaPipeline(VisionLanguagePipeline):
    family = "llava"
    manifest_schema = {
        "preprocessing": PREPROCESSING,
        "tokenizer": obj({"file": listed_file()}, {"bos_token": nullable(string()),
                                                             "eos_token": nullable(string())}),
        "chat": obj({"template": string(max_length=100_000), "image_token": string(), "image_token_id": _ID,
                     "image_seq_length": _SIZE, "stop_token_ids": list_of(_ID, max_items=16)}),
        "llm": LLM_SECTION,
    }
    generation = GenerationConfig(max_new_tokens=256, fit_context=True)

    @classmethod
    def check_consistency(cls, manifest):
        return cls.check_text(manifest, manifest["chat"]["image_seq_length"])

    def setup(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        chat = self.manifest["chat"]
        self.template = ImmutableSandboxedEnvironment(trim_blocks=False).from_string(chat["template"])
        self.setup_text(chat["image_token_id"], chat["image_seq_length"], chat["stop_token_ids"], 256)

    # -- conversations -------------------------------------------------------------------------
    def chat(self, image=None, system: str | None = None, frames: int = FRAMES, **generation) -> Chat:
        """A new conversation (no history) about ``image``: a path, PIL image or HWC uint8 array;
        a list of them (several images in the first turn); or a video's path (``frames`` of its
        frames as images: LLaVA-1.5 was trained on one image, llava-interleave on several)."""
        return Chat(self, images_of(image, frames), system, self.generation.with_options(**generation))

    def answer(self, image, question: str, frames: int = FRAMES, **generation) -> str:
        """One question, one answer, no history (``image`` as :meth:`chat` takes it)."""
        return self.chat(image, frames=frames, **generation).send(question)

    def answer_batch(self, images: Sequence[ImageLike], questions: Sequence[str], **generation) -> list[str]:
        """One answer per (image, question), decoded together as one left-padded batch."""
        if len(images) != len(questions) or not questions:
            raise InputError(f"answer_batch needs as many images as questions (at least one), found "
                             f"{len(images)} and {len(questions)}")
        config = self.generation.with_options(**generation)
        prompts = [self.prompt([message("user", q, with_image=True)], self.image_features([im]))
                   for im, q in zip(images, questions)]
        return self.complete(prompts, config)

    # -- the pieces -----------------------------------------------------------------------------
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
        return self.merge(self.tokenizer.encode(self.render(messages)).ids, features)


# -- the command line -------------------------------------------------------------------------
def _chat_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", nargs="?", help="the image to talk about (optional), or a video "
                        "(--frames of its frames as images; the [video] extra)")
    parser.add_argument("--frames", type=positive_int, default=FRAMES, help=f"frames of a video (default {FRAMES})")
    parser.add_argument("--prompt", help="ask this once and print the answer (no standard input needed)")
    decoding_arguments(parser, max_new_tokens=256)
    parser.add_argument("--temperature", type=finite_float, help="sample at this temperature (default: greedy)")
    parser.add_argument("--top-p", type=finite_float)
    parser.add_argument("--seed", type=int, help="seed for sampling, for reproducible answers")


def _chat(pipeline: LlavaPipeline, args) -> None:
    import sys

    options = decoding_options(args) | {"seed": args.seed}
    if args.temperature is not None or args.top_p is not None:
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    chat = pipeline.chat(args.image, frames=args.frames, **options)
    if args.prompt is not None:
        _say(chat.send(args.prompt, stream=True), chat)
        return
    print("chat: type a message; /new starts a new conversation, /quit (or end of input) leaves", file=sys.stderr)
    for line in sys.stdin:
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text == "/new":
            chat = pipeline.chat(chat.images or None, **options)  # the same images (a video decoded once)
            print("(new conversation)", file=sys.stderr)
        elif text:
            _say(chat.send(text, stream=True), chat)


def _say(pieces: Iterator[str], chat: Chat) -> None:
    import sys

    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    if chat.finish_reason == "length":
        print("(the answer was cut: it reached --max-new-tokens or the end of the model's context)", file=sys.stderr)


register_task(Task("chat", ("llava",), "chat about IMAGE (or a video's frames): streams answers; --prompt for one "
                   "answer",
                   _chat_arguments, _chat))
