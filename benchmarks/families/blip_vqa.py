"""BLIP VQA's measurement (:mod:`.blip`): captioning's (:mod:`.blip_caption`) with a question put
with each image, a whole answer of ``ANSWER_TOKENS`` tokens timed, and VQA accuracy with --data."""

from __future__ import annotations

from .blip import ANSWER_TOKENS, QUESTIONS, REFERENCE_ANSWER, task_work
from .blip_caption import BundleBlip, CaptionWork, TorchBlip


class TorchBlipVqa(TorchBlip):
    """The FP32 PyTorch reference for VQA: the question encoded against the image, the answer
    decoded against the question, as ``BlipForQuestionAnswering.generate``."""

    task, tokens, whole = "vqa", ANSWER_TOKENS, "answer"

    def call_inputs(self) -> dict:
        return self.question(QUESTIONS[0])


class BundleBlipVqa(BundleBlip):
    task, tokens, whole = "vqa", ANSWER_TOKENS, "answer"

    def whole_call(self, image):
        """One whole answer of ``tokens`` tokens to the first question (the stop token barred)."""
        return lambda: self.p.answer_tokens(image, QUESTIONS[0], max_new_tokens=self.tokens, stop_token_ids=())


class VqaWork(CaptionWork):
    name, whole, reference = "vqa", "answer", REFERENCE_ANSWER
    torch_runner, bundle_runner = TorchBlipVqa, BundleBlipVqa

    def say(self, pipeline, image) -> str:
        return f"Q: {QUESTIONS[0]} A: {pipeline.answer(image, QUESTIONS[0])}"

    def say_of(self, pipeline, scene) -> list[tuple[str, bool]]:
        asked = [(q, pipeline.answer(scene.image, q), a) for q, a, _ in scene.questions[:3]]
        return [(f"{q} {said}", said == truth) for q, said, truth in asked]

    def question(self, index: int) -> str:
        return QUESTIONS[index % len(QUESTIONS)]

    def workload(self, bench, found: dict) -> dict:
        return found | {
            "questions": list(QUESTIONS), "answer_tokens": ANSWER_TOKENS, "teacher_forced_answer": REFERENCE_ANSWER,
            "note": "latency at batch 1: vision is one image; answer is the whole greedy answer of "
                    f"{ANSWER_TOKENS} tokens to one question (vision, question encoder, cross keys/values and "
                    "every decoder step); exact match: the answer's tokens equal FP32's (answers of exactly "
                    f"{ANSWER_TOKENS} tokens, the stop token barred until then); BLEU-4 and CIDEr-D "
                    "against FP32's answers, over token ids; VQA accuracy (with --data): min(1, humans who "
                    "gave the answer / 3)"}


task_work(VqaWork())
