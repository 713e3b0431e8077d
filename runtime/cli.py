"""The ``edgevfm`` command. Each subcommand is a thin layer over a typed function; the heavy ones
(export, quantize, bench, demo) are imported only when called, so the runtime alone stays light."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import EXIT_CODES, EXIT_INTERRUPTED, EdgeVfmError, MissingExtraError
from .tasks import existing_folder, new_folder, positive_int

EPILOG = ("MODEL is a hub id (openai/clip-vit-base-patch32), a folder saved with save_pretrained, or random:<preset>. "
          "Exit codes: " + "; ".join(f"{code} {meaning.split(':')[0]}" for code, meaning in EXIT_CODES.items()) + ".")
FORCE_HELP = ("replace OUTPUT if it is an edgevfm bundle (never another folder or file, never the input); "
              "the old bundle stays intact until the new one is complete")


def _heavy(module: str, extra: str, what: str):
    """Import an optional layer, turning a missing dependency into advice instead of a traceback."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.startswith("edgevfm"):
            raise
        raise MissingExtraError(extra, what, exc) from None


def _presets_in_help(parser) -> None:
    """``export --help`` ends with the offline presets, read from the export registry only when the
    help is shown (building the parser must not import torch)."""
    plain = parser.format_help

    def format_help() -> str:
        try:
            from edgevfm.export.spec import preset_lines

            lines = preset_lines()
        except ImportError:
            return plain() + "\nThe offline presets (random:<name>) are listed once the [export] extra is installed.\n"
        return plain() + "\npresets (MODEL offline, no download):\n" + "".join(f"  {line}\n" for line in lines)

    parser.format_help = format_help


def cmd_export(args) -> None:
    api = _heavy("edgevfm.export.api", "export", "edgevfm export")
    out = api.export(args.model, args.output, family=args.family, opset=args.opset, force=args.force,
                     revision=args.revision, **({"llm_graph": args.llm_graph} if args.llm_graph else {}))
    print(f"wrote {out}")


def cmd_quantize(args) -> None:
    api = _heavy("edgevfm.quantize.api", "export", "edgevfm quantize")
    out = api.quantize(args.bundle, args.recipe, args.output, calib=args.calib, samples=args.samples,
                       force=args.force, block_size=args.block_size, min_cosine=args.min_cosine,
                       max_drop=args.max_drop, threads=args.threads, reuse=args.reuse)
    print(f"wrote {out}")


def cmd_run(args) -> None:
    from .errors import InputError
    from .pipeline import load
    from .tasks import TASKS, tasks_of

    pipeline = load(args.bundle, threads=args.threads)
    task = TASKS.get(args.task)
    if pipeline.family not in task.families:
        raise InputError(f"task {task.name!r} answers {' and '.join(task.families)} bundles, but {args.bundle} is a "
                         f"{pipeline.family} "
                         f"bundle: its tasks are {', '.join(tasks_of(pipeline.family))}")
    task.run(pipeline, args)


def cmd_bench(args) -> None:
    api = _heavy("edgevfm.benchmarks.api", "bench", "edgevfm bench")
    result = api.bench(args.bundles, reference=args.reference, data=args.data, threads=args.threads,
                       runs=args.runs, batch=args.batch, out_dir=args.output, rounds=args.rounds)
    print(f"wrote {result['report']}")


def cmd_info(args) -> None:
    from .info import bundle_info, format_info

    print(format_info(bundle_info(args.bundle)))


def cmd_demo(args) -> None:
    demo = _heavy("edgevfm.benchmarks.demo", "bench", "edgevfm demo")
    demo.run_demo(args.output, models=args.model or demo.DEFAULT_MODELS, report_dir=args.report_dir, runs=args.runs,
                  threads=args.threads, variants=args.variants, rounds=args.rounds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgevfm", description="Visual foundation models: export, quantize, run, benchmark.",
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="checkpoint -> validated FP32 bundle", epilog=EPILOG)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--family", help="family to export as (default: read from the checkpoint's config)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--llm-graph", choices=("builder", "plain"),
                   help="a language model's graph (LLaVA): onnxruntime-genai's builder (fused attention, shared KV "
                        "buffer, the faster; default) or plain (torch's exporter, any text model)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_export)
    _presets_in_help(p)

    p = sub.add_parser("quantize", help="FP32 bundle -> INT8 / INT4 / FP16 bundle")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--recipe", required=True,
                   help="int8-dynamic, int8-static, int4, fp16, ov-fp32, ov-bf16, ov-int8, ov-int4, a family recipe "
                        "(sam-int8, sam-ov-int8, sam-ov-bf16, llava-int4, llava-int8, blip2-int8, blip2-int4) or auto: "
                        "measure them all here and keep the fastest within --min-cosine / --max-drop")
    p.add_argument("--min-cosine", type=float, help="auto: the lowest embedding cosine to FP32 allowed (CLIP; "
                                                    "default 0.999)")
    p.add_argument("--max-drop", type=float, help="auto: the largest drop in agreement with FP32 allowed (zero-shot "
                                                  "top-1, mask IoU, next-token top-1; default 0.02 CLIP, 0.05 others)")
    p.add_argument("--threads", type=positive_int, default=2, help="auto: threads to measure with (default 2)")
    p.add_argument("--reuse", type=Path, metavar="DIR", help="auto: bundles already made from BUNDLE, one folder per "
                   "recipe named after it (as edgevfm demo writes them in demo-out/MODEL): measured, not made again")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--calib", type=existing_folder, help="folder of calibration images (default: scikit-image's photos)")
    p.add_argument("--samples", type=positive_int, help="calibration images (default: 32 for CLIP, 8 for SAM)")
    p.add_argument("--block-size", type=int, choices=[16, 32, 64, 128, 256],
                   help="int4 block size (default 32; ov-int4 measures 128, 64 and 32 and keeps the fewest "
                        "bits per weight within its floor)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("run", help="run a bundle: classify, retrieve, segment, masks")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: one per core)")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    from . import families  # noqa: F401  (registers each family's tasks; numpy only)
    from .tasks import TASKS

    for name, task in TASKS.items():
        task.add_arguments(tasks.add_parser(name, help=f"[{'/'.join(task.families)}] {task.help}", description=task.help))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="latency, memory, size and accuracy against the FP32 PyTorch reference",
                       epilog=EPILOG)
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
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="parts, precisions, sizes and source of a bundle")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="offline: export -> quantize (every recipe) -> run -> bench, with a report")
    p.add_argument("-o", "--output", type=new_folder, default=Path("demo-out"))
    p.add_argument("--model", action="append", help="model to run (repeatable; default: random:clip-vit-b32, "
                   "random:sam-tiny, trained:llava-smol, random:blip-tiny, random:blip-vqa-tiny and "
                   "random:blip2-tiny; make report runs the real sizes)")
    p.add_argument("--report-dir", type=new_folder, help="reports go to REPORT_DIR/<model> (default OUTPUT/report)")
    p.add_argument("--runs", type=positive_int, help="timed runs per figure (default: 30 for CLIP, 10 for SAM)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--variants", action="store_true", help="also export and bench each family's other export "
                   "choices (LLaVA: the plain llm graph against the builder's) and, for CLIP and SAM, the "
                   "--recipe auto choice; make report does")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="interleaved rounds of every row per bench (default 1; make report uses 3)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit code (see ``EXIT_CODES``: argparse exits 2 by itself)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EdgeVfmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
