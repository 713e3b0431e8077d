"""``edgevfm batch``: its arguments and the call (see :mod:`edgevfm.runtime.commands`). The job
itself (:mod:`.batch`) is imported when the command runs: it needs the ``[scale]`` extra (Ray Data)."""

from __future__ import annotations

from edgevfm.runtime.commands import Command, Extension, extend_command, help_from, import_layer, register_command
from edgevfm.runtime.errors import UsageError
from edgevfm.runtime.tasks import finite_float, nonempty_text, positive_int


def arguments(p) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle to run (capfilt: the captioner)")
    p.add_argument("task", metavar="TASK", help="what to compute for each image (listed below)")
    p.add_argument("--input", required=True, metavar="SRC",
                   help="a folder or glob of images, or a .parquet/.csv table with a 'path' (or 'image' bytes) "
                        "column and an optional 'text' column; local paths or URIs pyarrow reads (s3://, gs://)")
    p.add_argument("--output", required=True, metavar="DST",
                   help="a new or empty folder for the Parquet shards and summary.json (or a job's, with --resume)")
    p.add_argument("--resume", action="store_true", help="finish the job DST holds: skip the rows it has written")
    task = p.add_argument_group("task options")
    task.add_argument("--labels", nargs="+", type=nonempty_text, help="classify: the labels")
    task.add_argument("--question", type=nonempty_text, help="ask: the question (default: each row's text)")
    task.add_argument("--prompt", help="caption, capfilt: the text a caption starts with")
    task.add_argument("--max-new-tokens", type=positive_int, help="caption, ask, capfilt: tokens to generate at most")
    task.add_argument("--beams", type=positive_int, help="caption, ask, capfilt: beam search width")
    task.add_argument("--filter", metavar="BUNDLE", help="capfilt: the BLIP retrieval bundle whose ITM head filters")
    task.add_argument("--threshold", type=finite_float, help="capfilt: the ITM probability a text must reach to be kept")
    task.add_argument("--points-per-side", type=positive_int, help="masks: the grid of point prompts (default 16)")
    task.add_argument("--pred-iou-thresh", type=finite_float, help="masks: the predicted IoU a mask must reach")
    task.add_argument("--stability-score-thresh", type=finite_float, help="masks: the stability a mask must reach")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--workers", type=positive_int, help="workers, each loading the bundle once "
                     "(default: the cluster's CPUs // --threads)")
    ray.add_argument("--threads", type=positive_int, default=1, help="runtime threads per worker (default 1)")
    ray.add_argument("--batch-size", type=positive_int, default=16, help="images per batch a worker takes (default 16)")
    ray.add_argument("--shard-rows", type=positive_int, default=1000,
                     help="rows per Parquet shard at most (default 1000; a shard is also written every 10 s)")
    ray.add_argument("--address", help="an existing Ray cluster: 'auto' or ray://HOST:PORT (default: start a local "
                     "Ray for this job)")
    ray.add_argument("--ship", action="store_true", default=None,
                     help="send the bundles through Ray's object store even on a local Ray (default: only with "
                          "--address; each node checks the copy's sha256s before use)")

    def lines() -> list[str]:
        tasks = import_layer("edgevfm.scale.tasks", "scale", "edgevfm batch")
        return [f"{t.name:<9} {t.help} ({t.takes})" for _, t in tasks.TASKS.items()]

    help_from(p, "tasks (TASK)", lines, "scale")


def run(args) -> None:
    batch = import_layer("edgevfm.scale.batch", "scale", "edgevfm batch")
    captioner, judge = batch.ROLES
    bundles = {captioner: args.bundle, **({judge: args.filter} if args.filter else {})}
    options = {"labels": args.labels, "question": args.question, "prompt": args.prompt,
               "max_new_tokens": args.max_new_tokens, "num_beams": args.beams, "threshold": args.threshold,
               "points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
               "stability_score_thresh": args.stability_score_thresh}
    job = batch.BatchJob(bundles, args.task, args.input, args.output,
                         options={k: v for k, v in options.items() if v is not None}, workers=args.workers,
                         threads=args.threads, batch_size=args.batch_size, address=args.address, ship=args.ship,
                         resume=args.resume, shard_rows=args.shard_rows)
    batch.run_batch(job)


register_command(Command("batch", "run a bundle over a collection of images on Ray Data (embed, classify, caption, "
                         "ask, capfilt, masks)", arguments, run, order=36))


def _every_node_arguments(p, what: str) -> None:
    fleet = p.add_argument_group("every node of a Ray cluster (the [scale] extra)")
    fleet.add_argument("--every-node", action="store_true", help=what)
    fleet.add_argument("--address", dest="fleet_address", metavar="ADDRESS",
                       help="with --every-node: 'auto' or ray://HOST:PORT (default: a local Ray, this machine only)")


def bench_arguments(p) -> None:
    _every_node_arguments(p, "run the bench on every node of the Ray cluster (--address) and write one report with a "
                             "row per machine; the bundles are shipped to the nodes and checked there")


def bench_run(args) -> None:
    if not args.every_node:
        raise UsageError("--address goes with --every-node (the bench on every node of that cluster): add it, or drop "
                         "--address to bench on this machine")
    fleet = import_layer("edgevfm.scale.fleet", "scale", "edgevfm bench --every-node")
    forwarded = ["--threads", str(args.threads), "--runs", str(args.runs), "--rounds", str(args.rounds),
                 "--batch", str(args.batch), *(["--data", str(args.data)] if args.data else [])]
    fleet.fleet_bench([str(b) for b in args.bundles], args.reference, args.output, address=args.fleet_address,
                      bench_args=forwarded)


extend_command(Extension("bench", bench_arguments, lambda args: args.every_node or args.fleet_address, bench_run))


def quantize_arguments(p) -> None:
    _every_node_arguments(p, "with --recipe auto: measure and choose on every node of the Ray cluster (--address); "
                             "-o is then a folder for the report of each machine's winner")


def quantize_run(args) -> None:
    if not args.every_node or args.recipe != "auto":
        raise UsageError("--every-node and --address go with --recipe auto (each machine measures and chooses): "
                         f"add {'--every-node' if args.every_node is False else '--recipe auto'}")
    fleet = import_layer("edgevfm.scale.fleet", "scale", "edgevfm quantize --every-node")
    forwarded = ["--threads", str(args.threads)]
    for flag, value in (("--min-cosine", args.min_cosine), ("--max-drop", args.max_drop),
                        ("--max-task-drop", args.max_task_drop), ("--samples", args.samples)):
        if value is not None:
            forwarded += [flag, str(value)]
    if args.candidates:
        forwarded += ["--candidates", *args.candidates]
    if args.reuse or args.data or args.calib:
        raise UsageError("--reuse, --data and --calib name folders on this machine: with --every-node, leave them out "
                         "(each node calibrates on the default photos and measures on its own)")
    fleet.fleet_auto(str(args.bundle), args.output, address=args.fleet_address, quantize_args=forwarded)


extend_command(Extension("quantize", quantize_arguments, lambda args: args.every_node or args.fleet_address,
                         quantize_run))
