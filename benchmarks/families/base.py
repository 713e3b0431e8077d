"""The per-family benchmark interface: what ``edgevfm bench``, its worker, ``edgevfm demo``,
``--recipe auto`` and the INT8-per-CPU measurement ask of a family's benchmark, with the defaults a
family may leave as they are. A family subclasses :class:`Bench` in ``benchmarks/families/<family>.py``
and registers it with ``@BENCH.register(family)``; generic code reads only what is written here.

A *runner* is what a family's calls run on: the PyTorch reference (``torch_runner``, from a loaded
checkpoint) or a bundle (``bundle_runner``, from a loaded pipeline). The same workload goes
through both, and ``accuracy`` compares their ``outputs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

# how a workload that quicken() shortened says so (the report's settings say it too)
QUICK_LOOK = "edgevfm demo's quick look"


def load_on_this_cpu(path, threads: int | None = None):
    """A bundle opened to run on this CPU, as every measurement here opens it: a TensorRT-format
    one in its CPU simulation (``edgevfm.runtime.tensorrt``), any other with its backend's default."""
    from edgevfm.runtime import load
    from edgevfm.runtime.tensorrt import simulation_providers

    return load(path, threads=threads, providers=simulation_providers(path))


def demo_scenes(bundles: list[Path], threads: int, said_of) -> bool:
    """``edgevfm demo`` for bundles of a preset trained on the generated scenes: prints what each
    bundle says of three held-out scenes (``said_of(pipeline)(scene)`` -> [(text, right)] lists,
    one per line) with how many are right; False (nothing printed) for any other bundles."""
    from ..scene_data import bundle_from_scenes
    from ..scenes import HELD_OUT_SEED, scenes

    if not bundle_from_scenes(bundles[0]):
        return False
    shown = scenes(HELD_OUT_SEED, 3)
    print("      the scenes: " + "; ".join(s.captions[0] for s in shown))
    for path in bundles:
        for say in said_of(load_on_this_cpu(path, threads)):
            said = [x for s in shown for x in say(s)]
            shown_said = " | ".join(text for text, _ in said[:3])  # a caption per scene, or the first scene's answers
            print(f"      {path.name:>13}: {shown_said} ({sum(r for _, r in said)}/{len(said)} right)")
    return True


class Bench(ABC):
    # -- what make demo and make report run (edgevfm demo) ---------------------------------------
    demo_runs: ClassVar[int] = 5  # timed runs per figure in make report (--variants)
    quick_runs: ClassVar[int | None] = None  # in make demo (None: demo_runs)
    demo_recipes: ClassVar[tuple[str, ...] | None] = None  # make report's recipes (None: every recipe of the family)
    quick_recipes: ClassVar[tuple[str, ...] | None] = None  # make demo's (None: demo_recipes)
    export_variants: ClassVar[dict[str, dict]] = {}  # make report: other export choices, {label: export options}
    variant_recipes: ClassVar[tuple[str, ...]] = ()  # each variant quantized with these
    auto_in_report: ClassVar[bool] = False  # make report adds the bundle --recipe auto picks
    measures_peers: ClassVar[bool] = False  # peers() measures other runtimes on the same weights
    # -- python -m edgevfm.benchmarks.tensorrt: the family's TensorRT-format recipes, and the export
    # options they need (a language model's plain graph)
    tensorrt_recipes: ClassVar[tuple[str, ...]] = ("trt-int8", "trt-fp16")
    tensorrt_export: ClassVar[dict] = {}

    # -- the figures --recipe auto holds a candidate to (benchmarks/auto.py) ---------------------
    cosine_keys: ClassVar[tuple[str, ...]] = ()  # accuracy keys that are cosines to FP32 (the lowest counts)
    agreement_keys: ClassVar[tuple[str, ...]] = ()  # accuracy keys in [0, 1]: 1 - the lowest is the drop
    auto_floor: ClassVar[dict[str, float | None]] = {"min_cosine": None, "max_drop": 0.05}
    # task metrics against ground truth (with --data, or a trained preset's held-out scenes): each
    # row gains "<key> drop", FP32 PyTorch's score minus its own
    task_keys: ClassVar[tuple[str, ...]] = ()
    # {task key: the largest drop below FP32 PyTorch an INT8 row may have} (the report's task goals)
    task_goals: ClassVar[dict[str, float]] = {}
    max_runs: ClassVar[dict[str, int]] = {}  # {part: runs at most, over all rounds}: parts of seconds per call

    images: list  # the workload's images (arrays or paths); the INT8-per-CPU measurement may shorten it

    @classmethod
    def runs(cls, variants: bool) -> int:
        """Timed runs per figure: make report's (``variants``) or make demo's."""
        return cls.demo_runs if variants or cls.quick_runs is None else cls.quick_runs

    def __init__(self, data: str | None = None):
        """``data``: the user's --data folder (labelled images, annotations, masks), or None."""

    def quicken(self) -> None:
        """Shorten the workload for ``edgevfm demo`` (make demo: a newcomer's first look; make report
        measures in full), where a family's rows spend most of their time on what a first look can
        do with less; ``workload()`` states what was measured, and the report's settings that it was
        the quick look. The default changes nothing."""

    def check_bundles(self, bundles: list) -> None:
        """Refuse, before anything is measured, bundles this benchmark cannot measure (raise
        InputError saying why)."""

    # -- what a row runs ---------------------------------------------------------------------------
    @abstractmethod
    def torch_runner(self, checkpoint) -> Any:
        """The FP32 PyTorch reference's runner, from ``edgevfm.export.checkpoint.load_checkpoint``."""

    @abstractmethod
    def bundle_runner(self, pipeline) -> Any:
        """A bundle's runner, from ``edgevfm.runtime.load``."""

    @abstractmethod
    def calls(self, runner, batch: int) -> tuple[dict[str, Callable[[], Any]], tuple[str, int, Callable[[], Any]]]:
        """({figure: one call at batch 1, on prepared inputs}, (unit, items, one call at ``batch``
        for the throughput figure))."""

    @abstractmethod
    def outputs(self, runner) -> dict:
        """The runner's outputs on the whole workload, for :meth:`accuracy` (made once per row)."""

    def extra(self, runner) -> dict:
        """Figures beyond latency and accuracy, once per row (``{}``: none)."""
        return {}

    def peers(self, reference: str, threads: int, runs: int) -> dict:
        """Other runtimes on the same weights ({peer: figures, or {"absent": why}}), measured in a
        process of their own when ``measures_peers``."""
        return {}

    # -- the report ---------------------------------------------------------------------------------
    @abstractmethod
    def accuracy(self, ref: dict, out: dict) -> dict:
        """{metric: value} of ``out`` against the reference's ``ref``."""

    @abstractmethod
    def workload(self) -> dict:
        """What was measured (images, prompts, settings), as the report states it."""

    def goals(self, rows: list[dict], peaks: dict, peers: dict | None = None, machine: dict | None = None) -> list[dict]:
        """[{goal, met, measured}] from the measured rows, the machine's measured peaks, the peers'
        figures and the report's machine record (``machine_info``: the CPU measured on, not the one
        deriving); derived again by ``python -m edgevfm.benchmarks.report``."""
        return []

    @staticmethod
    def demo(bundles: list[Path], report_dir: Path, threads: int) -> None:
        """Show what each bundle answers (edgevfm demo's step 3)."""
