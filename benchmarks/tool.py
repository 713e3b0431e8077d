"""What the measuring tools share: the command that ran, the commands that made the bundle, the
machine, and where the Markdown (and a report folder's JSON) goes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .machine import machine_info


def command_of(module: str, argv) -> str:
    return f"python -m edgevfm.benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])


def made_by(manifest: dict) -> str:
    """The commands that made a bundle, from its manifest: the export and the recipe."""
    options = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in ((manifest.get("export") or {}).get("options") or {}).items())
    return (f"Bundle: `edgevfm export {manifest['source']['id']}{' ' + options if options else ''}`, then recipe "
            f"{(manifest.get('recipe') or {}).get('name', 'none (FP32)')}.")


def machine_line(manifest: dict, part: str, threads: int) -> str:
    """The CPU, its instruction sets, the threads and the precision the part runs at."""
    machine, found = machine_info(threads), manifest["parts"][part]
    return (f"CPU: {machine.get('cpu')}; instruction sets: {', '.join(machine.get('instruction_sets', []))}; "
            f"{threads} threads; the part's precision ({found.get('compute') or found['precision']})")


def emit(text: str, output: Path | None) -> int:
    if output:
        output.write_text(text)
    print(text)
    return 0


def write_report(output: Path, json_name: str, results: dict, text: str) -> int:
    """A report folder: ``report.md`` (``text``, also printed) and ``json_name`` (``results``)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / json_name).write_text(json.dumps(results, indent=2) + "\n")
    (output / "report.md").write_text(text)
    print(text)
    return 0
