"""``edgevfm bench`` and ``edgevfm demo``: their arguments and calls (see
:mod:`edgevfm.runtime.commands`). Imports only the runtime; the demo's models are listed here, and
each family's runs are read from the benchmark registry when the help is shown."""

from __future__ import annotations

from pathlib import Path

from edgevfm.quantize.choosers import AUTO, CHOOSERS
from edgevfm.runtime.commands import Command, help_from, import_layer, register_command
from edgevfm.runtime.tasks import existing_folder, new_folder, positive_int

# The demo is a newcomer's first minutes (under 15 on a 2-core CPU): CLIP at its real size (latency)
# and trained on generated scenes (right answers), the small SAM trained on them (at ViT-B size its
# encoder takes seconds a call, some 25 minutes with every recipe), LLaVA on the trained SmolLM2, the
# small BLIP captioner and question answerer trained on the scenes, and tiny BLIP-2 (a caption), whose
# real sizes take minutes each.
# `make report` passes the real sizes (the Makefile lists them).
DEFAULT_MODELS = ("random:clip-vit-b32", "trained:clip-shapes", "trained:sam-shapes", "trained:llava-shapes",
                  "trained:blip-shapes", "trained:blip-vqa-shapes", "random:blip2-tiny", "random:blip2-itm-tiny")


def run_lines() -> list[str]:
    """Each family's timed runs per figure, in make demo and with --variants (make report)."""
    from .families import BENCH

    return [f"{family}: {bench.runs(False)} (make demo), {bench.runs(True)} with --variants (make report)"
            for family, bench in BENCH.items()]


def bench_arguments(p) -> None:
    p.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE")
    p.add_argument("--reference", required=True, metavar="MODEL", help="the checkpoint the bundles came from")
    p.add_argument("--data", type=existing_folder,
                   help="CLIP: labelled image folder (one subfolder per class) for top-1 accuracy; BLIP, BLIP-2: "
                        "a COCO-captions or VQA annotation folder (JSON beside the images) for CIDEr or VQA accuracy")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--runs", type=positive_int, default=30, help="timed runs per measurement (default 30)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="split the runs over this many interleaved rounds of every row (default 3)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch size for the throughput figure (default 8)")
    p.add_argument("-o", "--output", required=True, type=new_folder, help="report folder")


def bench_run(args) -> None:
    api = import_layer("edgevfm.benchmarks.api", "bench", "edgevfm bench")
    result = api.bench(args.bundles, reference=args.reference, data=args.data, threads=args.threads,
                       runs=args.runs, batch=args.batch, out_dir=args.output, rounds=args.rounds)
    print(f"wrote {result['report']}")


def demo_arguments(p) -> None:
    p.add_argument("-o", "--output", type=new_folder, default=Path("demo-out"))
    p.add_argument("--model", action="append", help=f"model to run (repeatable; default: {', '.join(DEFAULT_MODELS)}; "
                   "make report runs the real sizes)")
    p.add_argument("--report-dir", type=new_folder, help="reports go to REPORT_DIR/<model> (default OUTPUT/report)")
    p.add_argument("--runs", type=positive_int, help="timed runs per figure (default: the family's, listed below)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--variants", action="store_true", help="also export and bench each family's other export "
                   "choices (LLaVA: the plain llm graph against the builder's) and, for CLIP and SAM, the "
                   "--recipe auto choice; make report does")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="interleaved rounds of every row per bench (default 1; make report uses 3)")
    help_from(p, "timed runs per figure (--runs) by family", run_lines, "bench")


def demo_run(args) -> None:
    demo = import_layer("edgevfm.benchmarks.demo", "bench", "edgevfm demo")
    demo.run_demo(args.output, models=args.model or DEFAULT_MODELS, report_dir=args.report_dir, runs=args.runs,
                  threads=args.threads, variants=args.variants, rounds=args.rounds)


def scenes_arguments(p) -> None:
    from .scene_data import KINDS

    p.add_argument("output", type=new_folder, metavar="OUT", help="the data set's folder (replaced if it exists)")
    p.add_argument("--kind", choices=KINDS, default="classify",
                   help="classify: a labelled folder (CLIP; with a retrieval set); captions: COCO captions "
                        "(BLIP, BLIP-2, LLaVA); vqa: VQA questions and answers; masks: COCO instance masks (SAM)")
    p.add_argument("--count", type=positive_int, default=200, help="scenes (default 200)")
    p.add_argument("--seed", type=int, default=None,
                   help="the split (default: the held-out seed the benchmarks use, which training never reads)")


def scenes_run(args) -> None:
    data = import_layer("edgevfm.benchmarks.scene_data", "bench", "edgevfm scenes")
    seed = data.HELD_OUT_SEED if args.seed is None else args.seed
    print(f"wrote {data.write(args.kind, args.output, args.count, seed, progress=True)}")


@CHOOSERS.register(AUTO)
def quantize_auto(bundle, out, **options) -> Path:
    """``quantize(bundle, "auto", out)`` and ``edgevfm quantize --recipe auto``: a measurement, so
    the benchmarks make it (:func:`.auto.quantize_auto`)."""
    auto = import_layer("edgevfm.benchmarks.auto", "export", "edgevfm quantize --recipe auto")
    return auto.quantize_auto(bundle, out, **options)


register_command(Command("bench", "latency, memory, size and accuracy against the FP32 PyTorch reference",
                         bench_arguments, bench_run, order=40, epilog=True))
register_command(Command("scenes", "write a data set of generated scenes with exact ground truth, for bench --data",
                         scenes_arguments, scenes_run, order=45))
register_command(Command("demo", "offline: export -> quantize (every recipe) -> run -> bench, with a report",
                         demo_arguments, demo_run, order=60))
