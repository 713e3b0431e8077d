"""``edgevfm bench BUNDLE... --reference M --every-node [--address A]``: the same bench on every node
of a Ray cluster, in one report with a row per machine; ``edgevfm quantize BUNDLE --recipe auto
--every-node``: each machine's own choice of recipe, in one report.

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
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from edgevfm.runtime.errors import EdgeVfmError, InputError

from .cluster import connected, cpu_nodes, edgevfm_error, ship
from .shipping import Shipped, digest, verified_copy

LIBRARIES = ("onnxruntime", "openvino", "torch", "numpy")


def on_every_node(bundles: list[str], address: str | None, work, args: list[str], log=print) -> tuple[dict, dict]:
    """``work(shipped bundles, args)`` on every node with CPUs at once, each alone on its node (the
    task asks for all of the node's CPUs), on that node's checked copies of ``bundles``. Returns
    ({node: what work returned}, {node: Ray's node record})."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    shipped = [Shipped(digest(b), str(b)) for b in bundles]
    with connected(address) as ray:
        shipped = [ship(b) for b in shipped]
        nodes = cpu_nodes()
        log(f"on {len(nodes)} nodes: {', '.join(n['NodeManagerHostname'] for n in nodes.values())}")
        task = ray.remote(work)
        calls = {node: task.options(num_cpus=info["Resources"]["CPU"],
                                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                 .remote(shipped, list(args)) for node, info in nodes.items()}
        try:
            return dict(zip(calls, ray.get(list(calls.values())))), nodes
        except Exception as exc:
            raise edgevfm_error(exc) or exc


def _new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"-o {str(out)!r} exists and is not an empty folder: pass a new folder for the fleet report")


def _write_folder(out: Path, files: dict[str, str]) -> None:
    """``files`` (relative path: text) written beside ``out`` and renamed into place."""
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    for name, text in files.items():
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        (stage / name).write_text(text)
    if out.exists():
        out.rmdir()
    os.replace(stage, out)


def _command(args: list[str]) -> subprocess.CompletedProcess:
    """An edgevfm command in a process of its own; its error, if it fails, as this node's error."""
    done = subprocess.run([sys.executable, "-m", "edgevfm.runtime.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no message"
        raise EdgeVfmError(f"edgevfm {args[0]} failed on this node (exit {done.returncode}): {last}")
    return done


def fleet_bench(bundles: list[str], reference: str, out_dir: str | Path, address: str | None = None,
                bench_args: list[str] = (), log=print) -> dict:
    """Run the bench on every node with CPUs; returns the fleet results (also in ``fleet.json``)."""
    out = Path(out_dir)
    _new_folder(out)
    found, nodes = on_every_node(bundles, address, _bench_here, [reference, *bench_args], log)
    results = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "reference": reference,
               "bundles": [str(b) for b in bundles], "bench_args": list(bench_args),
               "nodes": {node: {"hostname": nodes[node]["NodeManagerHostname"], "machine": r["results"]["machine"],
                                "rows": _rows(r["results"])} for node, r in found.items()}}
    files = {f"nodes/{node[:12]}/{name}": text for node, r in found.items() for name, text in r["files"].items()}
    _write_folder(out, {**files, "fleet.json": json.dumps(results, indent=2) + "\n", "fleet.md": report(results)})
    log(f"wrote {out / 'fleet.md'} ({len(found)} machines)")
    return results


def _bench_here(shipped: list[Shipped], args: list[str]) -> dict:
    """On one node: its checked copies of the bundles, benched in a process of their own."""
    reference, *bench_args = args
    copies = [str(verified_copy(b)) for b in shipped]
    with tempfile.TemporaryDirectory(prefix="edgevfm-fleet-") as work:
        report_dir = Path(work) / "report"
        _command(["bench", *copies, "--reference", reference, "-o", str(report_dir), *bench_args])
        files = {p.name: p.read_text() for p in report_dir.iterdir() if p.suffix in (".md", ".json")}
    return {"results": json.loads(files["results.json"]), "files": files}


def fleet_auto(bundle: str, out_dir: str | Path, address: str | None = None, quantize_args: list[str] = (),
               log=print) -> dict:
    """``quantize --recipe auto`` on every node: each measures the candidates on its own CPU and
    chooses; the report records each machine's winner and figures (the bundles stay on the nodes'
    scratch space: quantize auto on the machine you deploy to, to keep its bundle)."""
    out = Path(out_dir)
    _new_folder(out)
    found, nodes = on_every_node([bundle], address, _auto_here, list(quantize_args), log)
    results = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "bundle": str(bundle),
               "quantize_args": list(quantize_args),
               "nodes": {node: {"hostname": nodes[node]["NodeManagerHostname"], **r} for node, r in found.items()}}
    _write_folder(out, {"fleet-auto.json": json.dumps(results, indent=2) + "\n", "fleet-auto.md": auto_report(results)})
    log(f"wrote {out / 'fleet-auto.md'}: " + ", ".join(f"{n['hostname']} ({n['auto']['measured']['isa']}) "
                                                      f"{n['auto']['chosen']}" for n in results["nodes"].values()))
    return results


def _auto_here(shipped: list[Shipped], args: list[str]) -> dict:
    copy = str(verified_copy(shipped[0]))
    with tempfile.TemporaryDirectory(prefix="edgevfm-fleet-auto-") as work:
        _command(["quantize", copy, "--recipe", "auto", "-o", str(Path(work) / "auto"), *args])
        manifest = json.loads((Path(work) / "auto" / "manifest.json").read_text())
    return {"auto": manifest["recipe"]["auto"]}


def auto_report(results: dict) -> str:
    nodes = results["nodes"]
    lines = ["# quantize --recipe auto on every node", "",
             f"Made on {results['created']} by `edgevfm quantize {results['bundle']} --recipe auto --every-node "
             f"{' '.join(results['quantize_args'])}`: each node measured the candidates on its own copy (shipped "
             "and checked) and chose the fastest within the floors.", "",
             "| node | host | CPU | ISA | chosen | why |", "| --- | --- | --- | --- | --- | --- |"]
    for node, n in nodes.items():
        a = n["auto"]
        lines.append(f"| {node[:12]} | {n['hostname']} | {a['measured']['cpu']} | {a['measured']['isa']} | "
                     f"{a['chosen']} | {a['why']} |")

    def latency(candidate: dict) -> str:
        if "latency_ms" not in candidate:
            return "skipped"
        return f"{candidate['latency_ms']:.2f}{'' if candidate.get('passed') else ' (outside the floors)'}"

    lines += ["", "Each candidate's latency (ms, the family's parts summed) and whether it kept the floors:", "",
              *_by_node("recipe", nodes, lambda n: n["auto"]["candidates"], "recipe", latency)]
    return "\n".join(lines) + "\n"


def _by_node(title: str, nodes: dict, items, key: str, cell) -> list[str]:
    """A Markdown table of a row per item (named by ``item[key]``, in first-seen order) and a column
    per node: ``cell(item)`` where the node has that item, "-" where it has none."""
    found = {node: {item[key]: item for item in items(n)} for node, n in nodes.items()}
    names = list(dict.fromkeys(name for by_name in found.values() for name in by_name))
    return [f"| {title} | " + " | ".join(node[:12] for node in nodes) + " |",
            "| --- | " + " | ".join("---" for _ in nodes) + " |",
            *(f"| {name} | " + " | ".join(cell(by_name[name]) if name in by_name else "-"
                                         for by_name in found.values()) + " |" for name in names)]


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
    def figures(row: dict) -> str:
        latency = ", ".join(f"{part} {ms:g}" for part, ms in row["p50_ms"].items())
        return latency + (f"; {row['figure'][0]} {row['figure'][1]:.4g}" if row["figure"] else "")

    lines += ["", "p50 latency per part (ms) and the row's task figure, per machine:", "",
              *_by_node("row", nodes, lambda n: n["rows"], "name", figures)]
    return "\n".join(lines) + "\n"
