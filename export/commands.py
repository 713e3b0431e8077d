"""``edgevfm export``: its arguments and the call (see :mod:`edgevfm.runtime.commands`). Imports
only the runtime: the exporter (torch) is imported when the command runs."""

from __future__ import annotations

from pathlib import Path

from edgevfm.runtime.commands import EPILOG, FORCE_HELP, Command, help_from, import_layer, register_command


def arguments(p) -> None:
    from .spec import LLM_GRAPHS

    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--family", help="family to export as (default: read from the checkpoint's config)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--llm-graph", choices=LLM_GRAPHS,
                   help="a language model's graph (LLaVA): onnxruntime-genai's builder (fused attention, shared KV "
                        "buffer, the faster; default) or plain (torch's exporter, any text model)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    def presets() -> list[str]:
        from .spec import preset_lines

        return preset_lines()

    help_from(p, "presets (MODEL offline, no download)", presets, "export")


def run(args) -> None:
    api = import_layer("edgevfm.export.api", "export", "edgevfm export")
    out = api.export(args.model, args.output, family=args.family, opset=args.opset, force=args.force,
                     revision=args.revision, **({"llm_graph": args.llm_graph} if args.llm_graph else {}))
    print(f"wrote {out}")


register_command(Command("export", "checkpoint -> validated FP32 bundle", arguments, run, order=10, epilog=True))
