"""BLIP-2 benchmark: BLIP's measurements (:mod:`.blip`) over BLIP-2's runners.

Latency: ``vision`` (ViT, Q-Former, projection) and a whole caption of ``CAPTION_TOKENS`` tokens
(no early stop). Accuracy against the FP32 PyTorch model: caption agreement, BLEU-4 and CIDEr-D
against FP32's captions, and teacher-forced next-token agreement and KL along a fixed caption
after the image's query tokens, overall and where the FP32 top-1 margin is clear. With ``--data``
of COCO captions, CIDEr-D against the human captions; with VQA annotations, BLIP-2 answers
("Question: ... Answer:") and the latency figure is a whole answer.
"""

from __future__ import annotations

import numpy as np

from . import BENCH
from .blip import ANSWER_TOKENS, CAPTION_TOKENS, QUESTIONS, BlipBench
from .blip2_retrieval import BundleBlip2Retrieval, TorchBlip2Retrieval


@BENCH.register("blip2")
class Blip2Bench(BlipBench):
    demo_recipes = ("blip2-int8", "blip2-int4", "int8-dynamic")
    quick_recipes = None  # make demo takes demo_recipes too (BLIP's quick list is not BLIP-2's)
    tensorrt_recipes = ("blip2-trt-int4", "blip2-trt-int8", "trt-int8", "trt-fp16")

    def __init__(self, data: str | None = None):
        super().__init__(data)
        self.task = self.data_task or "caption"  # one checkpoint does both: the annotations say which

    def check_bundles(self, bundles) -> None:
        """A generative BLIP-2 bundle captions and answers; a retrieval one (Blip2ForImageTextRetrieval)
        matches, and is measured as BLIP's retrieval bundles are: the two kinds do not mix, and a
        retrieval bundle takes captions as --data."""
        from edgevfm.runtime.errors import InputError

        kinds = {bundle.manifest.get("task", "caption") for bundle in bundles}
        if len(kinds) > 1:
            raise InputError("these BLIP-2 bundles mix retrieval and generative ones: bench each kind apart")
        if kinds == {"retrieval"}:
            super().check_bundles(bundles)

    def torch_runner(self, checkpoint):
        if type(checkpoint.model).__name__ == "Blip2ForImageTextRetrieval":
            return TorchBlip2Retrieval(checkpoint)
        return _TorchBlip2(checkpoint)

    def bundle_runner(self, pipeline):
        return BundleBlip2Retrieval(pipeline) if getattr(pipeline, "task", None) == "retrieval" else _BundleBlip2(pipeline)

    def calls(self, runner, batch: int):
        if getattr(runner, "task", None) == "retrieval":
            return runner.calls(self.images[0])
        return runner.calls(self.images[0], QUESTIONS[0] if self.asks else None)

    def outputs(self, runner) -> dict:
        if getattr(runner, "task", None) != "retrieval":  # a generative runner does what the annotations ask
            runner.task = self.task
        return super().outputs(runner)


def _tokens(question: str | None) -> int:
    return CAPTION_TOKENS if question is None else ANSWER_TOKENS


class _TorchBlip2:
    """The FP32 PyTorch reference: transformers' processor and generate."""

    def __init__(self, checkpoint):
        import torch

        self.torch, self.model = torch, checkpoint.model
        self.processor, self.tokenizer = checkpoint.assets["image_processor"], checkpoint.assets["tokenizer"]
        self.queries = [self.model.config.image_token_id] * self.model.config.num_query_tokens
        self.template = checkpoint.spec.manifest_sections(checkpoint)["prompt"]["question_template"]
        self.seq2seq = not self.model.config.use_decoder_only_language_model

    def pixels(self, image):
        from edgevfm.runtime.image import load_image

        return self.processor([np.asarray(load_image(image))], return_tensors="pt")["pixel_values"]

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def ids(self, text: str | None):
        """The processor's ids: the image tokens, then the tokenized text (None: OPT's generate builds
        its own, image tokens and BOS; T5's takes an empty text, its EOS; SmolLM2's adds nothing)."""
        if text is None and not self.seq2seq and self.tokenizer("").input_ids:
            return None  # generate builds the same ids: the image tokens and BOS
        # a tokenizer that adds no BOS (SmolLM2's): the image tokens alone, as the runtime prompts
        return self.torch.tensor([self.queries + self.tokenizer(text or "").input_ids])

    def calls(self, image, question: str | None):
        torch, model, pixels = self.torch, self.model, self.pixels(image)
        ids, tokens = self.ids(None if question is None else self.template.format(question)), _tokens(question)

        def vision():
            with torch.inference_mode():
                return model.get_image_features(pixel_values=pixels)

        def whole():
            with torch.inference_mode():
                return model.generate(pixel_values=pixels, input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens)

        return {"vision": vision, "caption" if question is None else "answer": whole}, ("tokens", tokens, whole)

    def generated(self, image, question: str | None, fixed: bool) -> list[int]:
        ids, tokens = self.ids(None if question is None else self.template.format(question)), _tokens(question)
        with self.torch.inference_mode():
            out = self.model.generate(pixel_values=self.pixels(image), input_ids=ids, max_new_tokens=tokens,
                                      min_new_tokens=tokens if fixed else 0)
        # after the prompt (OPT: image tokens and BOS when generate built it); T5: after the decoder's start
        out = out[0, 1 if self.seq2seq else len(self.queries) + 1 if ids is None else ids.shape[1]:].tolist()
        return out[:-1] if out and out[-1] == self.model.config.text_config.eos_token_id else out

    def teacher_logits(self, image, question: str | None, text: str) -> np.ndarray:
        """OPT: the LLM's logits from BOS along ``text`` (after the question's prompt, if any); T5:
        the decoder's along its start token and ``text``, against the image (and the question)."""
        pixels = self.pixels(image)
        with self.torch.inference_mode():
            if self.seq2seq:
                start = [self.model.config.text_config.decoder_start_token_id]
                decoded = self.torch.tensor([start + self.tokenizer(text, add_special_tokens=False).input_ids])
                prompt = None if question is None else self.template.format(question)
                return self.model(pixel_values=pixels, input_ids=self.ids(prompt),
                                  decoder_input_ids=decoded).logits[0].float().numpy()
            prompt = text if question is None else f"{self.template.format(question)} {text}"
            logits = self.model(pixel_values=pixels, input_ids=self.ids(prompt)).logits
        answer = None if question is None else len(self.tokenizer(" " + text, add_special_tokens=False).input_ids)
        return _along_text(logits[0, len(self.queries):].float().numpy(), answer)


class _BundleBlip2:
    def __init__(self, pipeline):
        self.p = pipeline

    def text(self, ids: list[int]) -> str:
        return self.p.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def calls(self, image, question: str | None):
        p, tokens = self.p, _tokens(question)
        pixels = {"pixel_values": p.image_inputs([image])}
        prompt = None if question is None else p.manifest["prompt"]["question_template"].format(question)

        def whole():
            return p.caption_tokens([image], prompt, max_new_tokens=tokens, stop_token_ids=())

        return ({"vision": lambda: p.run("vision", pixels), "caption" if question is None else "answer": whole},
                ("tokens", tokens, whole))

    def generated(self, image, question: str | None, fixed: bool) -> list[int]:
        prompt = None if question is None else self.p.manifest["prompt"]["question_template"].format(question)
        tokens = _tokens(question)
        return self.p.caption_tokens([image], prompt, max_new_tokens=tokens, min_new_tokens=tokens if fixed else 0)[0]

    def teacher_logits(self, image, question: str | None, text: str) -> np.ndarray:
        template = self.p.manifest["prompt"]["question_template"]
        if self.p.seq2seq:
            decoder = self.p.encoded(self.p.prompt(image, None if question is None else template.format(question)))
            ids = [self.p.manifest["llm"]["decoder_start_token_id"]] + self.p.tokenizer.encode(
                text, add_special_tokens=False).ids
            n = len(ids)
            return decoder.step(np.asarray([ids], np.int64), np.ones((1, n), np.int64), np.arange(n)[None],
                                decoder.empty_cache(1))[1][0]
        prompt = self.p.prompt(image, text if question is None else f"{template.format(question)} {text}")
        length = len(prompt.ids)
        decoder = self.p.decoder
        _, logits, _ = decoder.step(prompt.embeds[None], np.ones((1, length), np.int64), np.arange(length)[None],
                                    decoder.empty_cache(1))
        answer = None if question is None else len(self.p.tokenizer.encode(" " + text, add_special_tokens=False).ids)
        return _along_text(logits[0, self.p.image_seq_length:], answer)


def _along_text(logits: np.ndarray, answer: int | None) -> np.ndarray:
    """A decoder-only model's logits after the image tokens: all of them for a caption; after a
    question, the ``answer`` positions that predict the text's tokens and the one after it (a
    question's own tokens would make every image's logits a different length)."""
    return logits if answer is None else logits[-(answer + 1):]
