"""``edgevfm bench BUNDLE... --reference M --every-node [--address A]``: the same bench on every node
of a Ray cluster, in one report with a row per machine.

The bundles travel through the object store (:mod:`.shipping`) and each node checks its copy. On
each node a Ray task pinned to it, asking for all of the node's CPUs (so that nothing else of the
job runs there meanwhile), runs ``edgevfm bench`` in its own process as on one machine, and sends
back its ``results.json`` and ``report.md``. The nodes run at the same time, one bench each. The
report: ``fleet.md`` (the machines: CPU, cores, ISA, library versions; then each bench row's
latency and task figure per machine), ``fleet.json``, and each node's own report under
``nodes/<node>/``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from edgevfm.runtime.errors import EdgeVfmError, InputError

from .shipping import Shipped, digest, verified_copy

LIBRARIES = ("onnxruntime", "openvino", "torch", "numpy")


def fleet_bench(bundles: list[str], reference: str, out_dir: str | Path, address: str | None = None,
                bench_args: list[str] = (), log=print) -> dict:
    """Run the bench on every node with CPUs; returns the fleet results (also in ``fleet.json``)."""
    import ray

    from .batch import _edgevfm_error, _shipped

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"-o {str(out)!r} exists and is not an empty folder: pass a new folder for the fleet report")
    shipped = [Shipped(digest(b), str(b)) for b in bundles]
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        shipped = [_shipped(b) for b in shipped]
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}
        log(f"bench on {len(nodes)} nodes: {', '.join(n['NodeManagerHostname'] for n in nodes.values())}")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        bench = ray.remote(_bench_here)
        calls = {node: bench.options(num_cpus=info["Resources"]["CPU"],
                                     scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                 .remote(shipped, reference, list(bench_args)) for node, info in nodes.items()}
        try:
            found = dict(zip(calls, ray.get(list(calls.values()))))
        except Exception as exc:
            raise _edgevfm_error(exc) or exc
    finally:
        if started_here:
            ray.shutdown()
    results = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "reference": reference,
               "bundles": [str(b) for b in bundles], "bench_args": list(bench_args),
               "nodes": {node: {"hostname": nodes[node]["NodeManagerHostname"], "machine": r["results"]["machine"],
                                "rows": _rows(r["results"])} for node, r in found.items()}}
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    for node, r in found.items():
        (stage / "nodes" / node[:12]).mkdir(parents=True)
        for name, text in r["files"].items():
            (stage / "nodes" / node[:12] / name).write_text(text)
    (stage / "fleet.json").write_text(json.dumps(results, indent=2) + "\n")
    (stage / "fleet.md").write_text(report(results))
    if out.exists():
        out.rmdir()
    os.replace(stage, out)
    log(f"wrote {out / 'fleet.md'} ({len(found)} machines)")
    return results


def _bench_here(shipped: list[Shipped], reference: str, bench_args: list[str]) -> dict:
    """On one node: its checked copies of the bundles, benched in a process of their own."""
    copies = [str(verified_copy(b)) for b in shipped]
    with tempfile.TemporaryDirectory(prefix="edgevfm-fleet-") as work:
        report_dir = Path(work) / "report"
        done = subprocess.run([sys.executable, "-m", "edgevfm.runtime.cli", "bench", *copies, "--reference", reference,
                               "-o", str(report_dir), *bench_args], capture_output=True, text=True)
        if done.returncode != 0:
            raise EdgeVfmError(f"edgevfm bench failed on this node (exit {done.returncode}): "
                               f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no message'}")
        files = {p.name: p.read_text() for p in report_dir.iterdir() if p.suffix in (".md", ".json")}
    return {"results": json.loads(files["results.json"]), "files": files}


def _rows(results: dict) -> list[dict]:
    """Each bench row's name, per-part p50 latency and first task figure: what the fleet table shows."""
    rows = []
    for row in results["rows"]:
        figures = {k: v for k, v in (row.get("accuracy") or {}).items() if not k.endswith("drop")}
        task = next(((k, v) for k, v in figures.items() if k.endswith(("accuracy", "miou", "cider", "agreement"))),
                    next(iter(figures.items()), None))
        rows.append({"name": row["name"], "p50_ms": {part: round(v["p50"], 3) for part, v in
                                                      (row.get("latency_ms") or {}).items()},
                     "figure": list(task) if task else None})
    return rows


def report(results: dict) -> str:
    nodes = results["nodes"]
    lines = ["# edgevfm bench on every node", "",
             f"Made on {results['created']} by `edgevfm bench {' '.join(results['bundles'])} --reference "
             f"{results['reference']} --every-node {' '.join(results['bench_args'])}`: each node ran the bench on "
             "its own copy of the bundles (shipped and checked), its full report under `nodes/<node>/`.", "",
             "| node | host | CPU | cores | ISA | " + " | ".join(LIBRARIES) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in LIBRARIES) + " |"]
    for node, n in nodes.items():
        m = n["machine"]
        libs = " | ".join(str(m.get("libraries", {}).get(lib, "-")) for lib in LIBRARIES)
        lines.append(f"| {node[:12]} | {n['hostname']} | {m['cpu']} | {m['usable_cores']} | {m['isa']} | {libs} |")
    lines += ["", "p50 latency per part (ms) and the row's task figure, per machine:", "",
              "| row | " + " | ".join(node[:12] for node in nodes) + " |",
              "| --- | " + " | ".join("---" for _ in nodes) + " |"]
    names = list(dict.fromkeys(r["name"] for n in nodes.values() for r in n["rows"]))
    for name in names:
        cells = []
        for n in nodes.values():
            row = next((r for r in n["rows"] if r["name"] == name), None)
            if row is None:
                cells.append("-")
                continue
            latency = ", ".join(f"{part} {ms:g}" for part, ms in row["p50_ms"].items())
            figure = f"; {row['figure'][0]} {row['figure'][1]:.4g}" if row["figure"] else ""
            cells.append(latency + figure)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
