"""BLIP visual question answering (``vision``, ``question``, ``cross_kv``, ``text_decoder``): the
question is encoded against the image, and the answer decoded against the question, as
transformers' ``BlipForQuestionAnswering.generate`` does."""

from __future__ import annotations

import numpy as np

from ..generate import generate
from ..image import ImageLike
from ..sampling import fitted
from ..tasks import Task, decoding_arguments, decoding_options, nonempty_text, register_task
from ..video import frames_argument, video_options
from .blip import ANSWER_TOKENS, BlipDecoding, task_pipeline


@task_pipeline("vqa")
class BlipVqaPipeline(BlipDecoding):
    task_parts = {"question": (("input_ids", "attention_mask", "image_embeds"), ("question_embeds",)),
                  "cross_kv": (("question_embeds",), ()),
                  "text_decoder": (("input_ids", "attention_mask", "position_ids"), ("logits",))}

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
        ids = self.encode(question, "question")
        states = self.run("question", {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                       "image_embeds": self.image_embeds([image])})["question_embeds"]
        return self.attending_to({"question_embeds": states})


def _ask_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image the question is about (BLIP-2: or a video)")
    parser.add_argument("question", metavar="QUESTION", type=nonempty_text, help="the question")
    decoding_arguments(parser, max_new_tokens=ANSWER_TOKENS)
    frames_argument(parser)


def _ask(pipeline, args) -> None:
    print(pipeline.answer(args.image, args.question, **video_options(pipeline, args.image, args.frames),
                          **decoding_options(args)))


# BLIP-2's pipeline answers the same call (runtime/families/blip2.py)
register_task(Task("ask", ("blip", "blip2"), "answer QUESTION about IMAGE (BLIP: a VQA bundle)", _ask_arguments,
                   _ask))
