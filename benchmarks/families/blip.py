"""BLIP benchmark: captioning, VQA and retrieval bundles, each task's measurement in a file of its
own (:mod:`.blip_caption`, :mod:`.blip_vqa`, :mod:`.blip_retrieval`) behind one family benchmark.

Latency: the vision encoder, and a whole caption (or answer) of a fixed length (``CAPTION_TOKENS``
/ ``ANSWER_TOKENS`` tokens, no early stop, so every row does the same work). Accuracy against the
FP32 PyTorch model: the generated texts (of that same fixed length: the stop token is barred until
then, as transformers' ``min_new_tokens``, since random weights often stop at once and empty
captions would all agree) compared by exact match and shared prefix (token ids), BLEU-4 and
CIDEr-D against the FP32 texts (over token ids), and teacher-forced next-token agreement and KL along a fixed
caption (answer), overall and at the positions where the FP32 top-1 margin is clear (random
weights leave most logits near-tied: the margin is printed beside every agreement figure).
With ``--data`` (a COCO-captions or VQA annotation folder, :mod:`..captions`), each row's CIDEr-D
against the human captions, or its VQA accuracy, too.
Retrieval bundles: the vision encoder and one whole ``match`` (vision, ITM head, both ITC
projections); against FP32, the ITM probability and ITC cosine differences over every pair of a
few photos and captions, and whether each query's top-1 (text -> image, image -> text, by ITC as
``retrieve`` ranks) is FP32's, beside FP32's own top-1 margin.
"""

from __future__ import annotations

from pathlib import Path

from edgevfm.quantize.calibration import skimage_photos

from . import BENCH
from .base import Bench, demo_scenes, load_on_this_cpu

CAPTION_TOKENS, ANSWER_TOKENS = 20, 8
REFERENCE_CAPTION = "a photo of a cat sitting on a couch next to a cup of coffee"
QUESTIONS = ("what is in the picture?", "what colour is it?", "how many people are there?")
REFERENCE_ANSWER = "a cat sitting on a couch"
TEXTS = ("a photo of a cat", "an astronaut in a space suit", "a cup of coffee on a table", "a rocket on the pad",
         "a man riding a horse", "a black and white photo of a street")
GOAL_ITM_DIFF = 0.02  # retrieval: largest ITM probability difference from FP32
CLEAR_MARGIN = 0.1  # FP32 top-1 minus top-2 probability at which a position counts as clear
GOAL_SPEEDUP, GOAL_AGREEMENT = 2.0, 0.90


# {task: its measurement (a BlipTask)}, filled by the task files
TASK_WORK: dict[str, "BlipTask"] = {}


class BlipTask:
    """One BLIP task's measurement: its runners, what ``whole`` latency figure it times, its outputs
    and accuracy against FP32, its workload's description and its accuracy goal. Subclasses in
    blip_caption.py, blip_vqa.py, blip_retrieval.py."""

    name: str  # the manifest's task
    whole: str  # the figure that times one whole use: caption, answer, match
    torch_runner: type
    bundle_runner: type

    def say(self, pipeline, image) -> str:
        """What a bundle of this task answers about ``image`` (edgevfm demo prints it)."""
        raise NotImplementedError

    def say_of(self, pipeline, scene) -> list[tuple[str, bool]]:
        """What a bundle says of a generated ``scene``, each with whether it is right."""
        raise NotImplementedError

    def question(self, index: int) -> str | None:
        """The question put with the workload's image ``index`` (None: none)."""
        return None

    def outputs(self, bench: "BlipBench", runner) -> dict:
        raise NotImplementedError

    def accuracy(self, bench: "BlipBench", ref: dict, out: dict) -> dict:
        raise NotImplementedError

    def workload(self, bench: "BlipBench", found: dict) -> dict:
        raise NotImplementedError

    def goal(self, row: dict) -> dict:
        """The accuracy goal of one bundle row."""
        raise NotImplementedError


def task_work(work: BlipTask) -> BlipTask:
    TASK_WORK[work.name] = work
    return work


@BENCH.register("blip")
class BlipBench(Bench):
    demo_runs = 5
    # the generic recipes and OpenVINO's INT8 and INT4 (ov-fp32/ov-bf16/ov-int8-plain would add a
    # minute each to make demo, and say little about captions that ov-int8 does not)
    demo_recipes = ("int8-dynamic", "int8-static", "int4", "fp16", "ov-int8", "ov-int4")
    quick_recipes = ("int8-dynamic", "int8-static", "fp16", "ov-int8")  # make demo
    # --recipe auto: the figures a candidate is held to (see benchmarks/auto.py), and their defaults
    cosine_keys = ()
    agreement_keys = ("next_token_top1_agreement", "text_to_image_top1_agreement", "image_to_text_top1_agreement")
    auto_floor = {"min_cosine": None, "max_drop": 0.05}
    max_runs = {"caption": 5, "answer": 5}
    # task metrics of each task's bundles (with --data, or a trained preset's held-out scenes), and
    # the most an INT8 row may lose of each: 2 CIDEr (0.02 on CIDEr-D's 0-10 scale), a point of VQA
    # or ITM accuracy
    task_keys = ("cider", "bleu4", "vqa_accuracy", "itm_accuracy", "text_to_image_recall@1", "image_to_text_recall@1")
    task_goals = {"cider": 0.02, "vqa_accuracy": 0.01, "itm_accuracy": 0.01}
    tasks = ("caption", "vqa", "retrieval")  # what the bundles may do; annotations must be of the bundles' task

    @staticmethod
    def demo(bundles: list[Path], report_dir: Path, threads: int) -> None:
        """Prints what each bundle says: of held-out generated scenes for a preset trained on them
        (with how many of its answers are right), else of scikit-image's cat."""

        def said_of(pipeline):
            # a BLIP bundle does its checkpoint's task; a BLIP-2 one (no task) captions and answers
            tasks = [pipeline.manifest["task"]] if "task" in pipeline.manifest else ["caption", "vqa"]
            return [lambda scene, task=task: TASK_WORK[task].say_of(pipeline, scene) for task in tasks]

        if demo_scenes(bundles, threads, said_of):
            return
        import skimage.data

        for path in bundles:
            pipeline = load_on_this_cpu(path, threads)
            said = TASK_WORK[pipeline.manifest.get("task", "caption")].say(pipeline, skimage.data.chelsea())
            print(f"      {path.name:>13}: {said or '(nothing: the model chose its stop token first)'}")

    def __init__(self, data: str | None = None):
        from ..captions import read_data

        self.images = skimage_photos()[:3]
        self.data_task, self.annotated, self.data_images = read_data(data)
        self.task = "caption"

    def check_bundles(self, bundles) -> None:
        """Refuse, before measuring anything, bundles this benchmark cannot measure, and
        annotations of another task than the bundles'."""
        from edgevfm.runtime.errors import InputError

        for bundle in bundles:
            task = bundle.manifest.get("task", "caption")
            if task not in self.tasks:
                raise InputError(f"the {bundle.manifest['family']} benchmark measures {' and '.join(self.tasks)} "
                                 f"bundles so far; {bundle.path} is a {task} bundle")
            self.task = task
        wanted = "caption" if self.task == "retrieval" else self.task  # retrieval: image i with caption i
        if self.data_task and self.data_task != wanted:
            raise InputError(f"--data holds {self.data_task} annotations, but the bundles are {self.task} bundles: "
                             f"give {'a COCO-captions' if wanted == 'caption' else 'VQA'} annotation folder")

    @property
    def work(self) -> BlipTask:
        """The measurement of the bundles' task."""
        return TASK_WORK[self.task]

    def torch_runner(self, checkpoint):
        from edgevfm.export.families.blip import task_of

        return TASK_WORK[task_of(checkpoint.model)].torch_runner(checkpoint)

    def bundle_runner(self, pipeline):
        return TASK_WORK[pipeline.manifest["task"]].bundle_runner(pipeline)

    def calls(self, runner, batch: int):
        return runner.calls(self.images[0])

    def questions(self) -> list[str | None]:
        """The question put with each image (None: a caption)."""
        return [self.work.question(i) for i in range(len(self.images))]

    @property
    def asks(self) -> bool:
        return self.task == "vqa"

    def outputs(self, runner) -> dict:
        """The runner's outputs on the task's workload (see each task's ``outputs``)."""
        self.task = runner.task
        return self.work.outputs(self, runner)

    def accuracy(self, ref: dict, out: dict) -> dict:
        return self.work.accuracy(self, ref, out)

    def workload(self) -> dict:
        return self.work.workload(self, {"images": len(self.images), "clear_margin": CLEAR_MARGIN, "annotated":
                                         f"{len(self.annotated)} {self.data_task} items" if self.annotated else None})

    def goals(self, rows: list[dict], peaks: dict, peers: dict | None = None, machine: dict | None = None) -> list[dict]:
        torch_row = next(r for r in rows if r["kind"] == "pytorch")
        work = next(w for w in TASK_WORK.values() if w.whole in torch_row["latency_ms"])
        verdicts = []
        whole = work.whole
        for row in rows:
            if row["kind"] != "bundle" or row["recipe"] is None:
                continue
            speedup = torch_row["latency_ms"][whole]["p50"] / row["latency_ms"][whole]["p50"]
            verdicts.append({"goal": f"{row['name']}: a whole {whole} at least {GOAL_SPEEDUP:.0f}x faster than PyTorch "
                                     "eager FP32", "met": bool(speedup >= GOAL_SPEEDUP),
                             "measured": f"{speedup:.2f}x ({row['latency_ms'][whole]['p50']:.1f} ms vs "
                                         f"{torch_row['latency_ms'][whole]['p50']:.1f} ms)"})
            verdicts.append(work.goal(row))
        return verdicts


from . import blip_caption, blip_retrieval, blip_vqa  # noqa: E402,F401  (register the tasks' measurements)
