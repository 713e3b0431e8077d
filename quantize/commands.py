"""``edgevfm quantize``: its arguments and the call (see :mod:`edgevfm.runtime.commands`). The
recipes, their families and the calibration defaults in its help are read from the registries
(:data:`.recipes.RECIPES`, :data:`.families.CALIBRATION`) when the help is shown."""

from __future__ import annotations

from pathlib import Path

from edgevfm.runtime.commands import FORCE_HELP, Command, help_from, import_layer, register_command
from edgevfm.runtime.tasks import existing_folder, positive_int

from .choosers import AUTO


def recipe_lines() -> list[str]:
    """One line per registered recipe: name, [families it is for], backend, description; those
    that are not offered on their own (steps of family recipes, controls) come last, marked."""
    from . import families  # noqa: F401  (registers the family recipes)
    from .recipes import RECIPES

    recipes = [recipe for _, recipe in RECIPES.items()]
    width = max(len(r.name) for r in recipes)
    lines = [f"{AUTO:<{width}}  every recipe of the bundle's family and backends, measured here: the fastest within "
             "--min-cosine / --max-drop"]
    for listed in (True, False):
        for r in (r for r in recipes if r.listed == listed):
            where = f"[{', '.join(r.families)}] " if r.families else ""
            mark = "" if listed else " (not offered by --recipe auto)"
            lines.append(f"{r.name:<{width}}  {where}{r.backend}: {r.description}{mark}")
    return lines


def sample_defaults() -> str:
    from .families import CALIBRATION

    return ", ".join(f"{family} {feeds.default_samples}" for family, feeds in CALIBRATION.items())


def arguments(p) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--recipe", required=True, metavar="RECIPE", help="a recipe of the list below, or auto")
    p.add_argument("--min-cosine", type=float, help="auto: the lowest embedding cosine to FP32 allowed (families "
                   "with embeddings; default: the family benchmark's floor)")
    p.add_argument("--max-drop", type=float, help="auto: the largest drop in agreement with FP32 allowed (zero-shot "
                   "top-1, mask IoU, next-token top-1; default: the family benchmark's floor)")
    p.add_argument("--data", type=existing_folder, metavar="DIR", help="auto: a data set with ground truth, as bench "
                   "--data reads it (edgevfm scenes writes one), to hold candidates to --max-task-drop")
    p.add_argument("--max-task-drop", type=float, help="auto: the largest drop in task score below the FP32 bundle's "
                   "allowed (zero-shot top-1, mask mIoU; 0.01 is one point), on --data or a trained preset's "
                   "held-out scenes")
    p.add_argument("--threads", type=positive_int, default=2, help="auto: threads to measure with (default 2)")
    p.add_argument("--candidates", nargs="+", metavar="RECIPE",
                   help="auto: the recipes to measure (default: every recipe of the family, and fp32)")
    p.add_argument("--reuse", type=Path, metavar="DIR", help="auto: bundles already made from BUNDLE, one folder per "
                   "recipe named after it (as edgevfm demo writes them in demo-out/MODEL): measured, not made again")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--calib", type=existing_folder, help="folder of calibration images (default: scikit-image's photos), or a data set "
                   "(COCO captions or VQA JSON, as edgevfm scenes writes) whose captions or questions calibrate "
                   "the text parts too")
    p.add_argument("--samples", type=positive_int, help="calibration images (default: the family's, listed below)")
    p.add_argument("--block-size", type=int, choices=[16, 32, 64, 128, 256],
                   help="int4 block size (default 32; ov-int4 measures 128, 64 and 32 and keeps the fewest "
                        "bits per weight within its floor)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    def lines() -> list[str]:
        return recipe_lines() + ["", f"--samples by family: {sample_defaults()}"]

    help_from(p, "recipes (RECIPE)", lines, "export")


def run(args) -> None:
    api = import_layer("edgevfm.quantize.api", "export", "edgevfm quantize")
    out = api.quantize(args.bundle, args.recipe, args.output, calib=args.calib, samples=args.samples,
                       force=args.force, block_size=args.block_size, min_cosine=args.min_cosine,
                       max_drop=args.max_drop, threads=args.threads, reuse=args.reuse, data=args.data,
                       max_task_drop=args.max_task_drop, candidates=args.candidates)
    print(f"wrote {out}")


register_command(Command("quantize", "FP32 bundle -> INT8 / INT4 / FP16 bundle", arguments, run, order=20))


def check_arguments(p) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--target", default="tensorrt", metavar="TARGET",
                   help="tensorrt (every pinned TensorRT) or tensorrt-VERSION (listed below)")
    p.add_argument("--json", action="store_true", help="the findings as JSON, for machines")

    def lines() -> list[str]:
        from .check import tables

        return [f"{name}: {t['platform']}, opset {t['opset'][0]} to {t['opset'][1]}; from {t['source'][0]}"
                for name, t in tables().items()]

    help_from(p, "targets (onnx-tensorrt's operator tables, quantize/tensorrt-operators.json)", lines, "export")


def check_run(args) -> None:
    check = import_layer("edgevfm.quantize.check", "export", "edgevfm check")
    findings = check.check_bundle(args.bundle, args.target)
    errors = [f for f in findings if f.severity == "error"]
    if args.json:
        print(check.as_json(findings))
    else:
        for finding in findings:
            print(finding.line())
        for target, counts in check.summary(findings, args.target).items():
            verdict = "passes" if not counts["errors"] else "fails"
            print(f"{target}: {verdict} ({counts['errors']} errors, {counts['warnings']} warnings)")
    if errors:
        raise check.CheckError(f"{args.bundle}: {len(errors)} findings TensorRT would refuse (listed above)")


register_command(Command("check", "will TensorRT build an engine from a bundle? (every node against its operator "
                         "table)", check_arguments, check_run, order=25))
