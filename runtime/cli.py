"""The ``edgevfm`` command. Each subcommand is a thin layer over a typed function, registered in
its layer's ``commands`` module (:mod:`.commands`): the runtime's own (``run``, ``info``) here, the
heavy ones (export, quantize, bench, demo) in theirs, which import their work only when called, so
the runtime alone stays light and never imports a layer above it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands import EPILOG, EXTENSIONS, Command, load_commands, register_command, runner
from .errors import EXIT_INTERRUPTED, EdgeVfmError
from .tasks import positive_int


def cmd_run(args) -> None:
    from .errors import InputError
    from .pipeline import load
    from .tasks import TASKS, tasks_of

    pipeline = load(args.bundle, threads=args.threads, providers=args.providers)
    task = TASKS.get(args.task)
    if pipeline.family not in task.families:
        raise InputError(f"task {task.name!r} answers {' and '.join(task.families)} bundles, but {args.bundle} is a "
                         f"{pipeline.family} "
                         f"bundle: its tasks are {', '.join(tasks_of(pipeline.family))}")
    task.run(pipeline, args)


def cmd_info(args) -> None:
    from .info import bundle_info, format_info

    print(format_info(bundle_info(args.bundle)))


def run_arguments(p) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: one per core)")
    p.add_argument("--providers", type=provider_list, metavar="P[,P...]",
                   help="ONNX Runtime execution providers in order (default: CPU; a TensorRT-format bundle: "
                        "TensorrtExecutionProvider where present; CPUExecutionProvider alone simulates it on the CPU)")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    from . import families  # noqa: F401  (registers each family's tasks; numpy only)
    from .tasks import TASKS

    for name, task in TASKS.items():
        task.add_arguments(tasks.add_parser(name, help=f"[{'/'.join(task.families)}] {task.help}", description=task.help))


def info_arguments(p) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE")


def provider_list(text: str) -> list[str]:
    found = [p.strip() for p in text.split(",") if p.strip()]
    if not found:
        raise argparse.ArgumentTypeError("expected one or more provider names, e.g. CPUExecutionProvider")
    return found


def engines_arguments(p) -> None:
    from .engines import TARGETS

    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--target", choices=TARGETS, help="the TensorRT the engines are for, where this machine has none "
                   "to ask (default: the installed one)")
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the plan as a shell script to run on the device")
    p.add_argument("--build", action="store_true", help="build the engines here (needs trtexec or TensorRT's Python "
                   "package: a Jetson or a GPU machine)")


def cmd_engines(args) -> None:
    from .engines import build, describe, plan, write_json, write_script

    found = plan(args.bundle, args.target)
    if args.output:
        write_script(found, args.output)
        print(f"wrote {args.output}")
    print(write_json(found) if args.json else describe(found))
    if args.build:
        for engine in build(found):
            print(f"built {engine}")


register_command(Command("engines", "TensorRT engine build plans (trtexec commands, profiles, cache keys) for a "
                         "TensorRT-format bundle; --build on the device", engines_arguments, cmd_engines, order=55))
register_command(Command("run", "run a bundle: classify, retrieve, segment, masks", run_arguments, cmd_run, order=30))
register_command(Command("info", "parts, precisions, sizes and source of a bundle", info_arguments, cmd_info,
                         order=50))


def build_parser() -> argparse.ArgumentParser:
    """The runtime's subcommands and every other layer's (:func:`.commands.load_commands`)."""
    parser = argparse.ArgumentParser(prog="edgevfm", description="Visual foundation models: export, quantize, run, benchmark.",
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in load_commands():
        p = sub.add_parser(command.name, help=command.help, **({"epilog": EPILOG} if command.epilog else {}))
        command.arguments(p)
        for extension in EXTENSIONS:
            if extension.command == command.name:
                extension.arguments(p)
        p.set_defaults(func=runner(command))
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
