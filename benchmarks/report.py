"""Reports people read: ``results.json`` (the data), ``report.md`` and ``report.html`` (tables,
the machine, the goals, the command that made them) and plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from edgevfm.runtime.cpu import isa_label


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.5f}" if abs(value) <= 1.0 else f"{value:,.1f}"
    return str(value)


def latency_table(results: dict) -> tuple[list[str], list[list[str]]]:
    parts = list(results["rows"][0]["latency_ms"])
    first = parts[0]
    torch_row = next(r for r in results["rows"] if r["kind"] == "pytorch")
    base, gop = torch_row["latency_ms"][first]["p50"], torch_row["gop"][first]
    header = ["row", "precision", "size MB", "load s", "first call ms"]
    spread = " (spread)" if results["settings"].get("rounds", 1) > 1 else ""
    header += [f"{p} p50 / p90 / p99 ms{spread}" for p in parts]
    header += [f"{first} speed-up vs PyTorch", f"{first} GOP/s", "throughput", "peak RSS MB"]
    body = []
    for r in results["rows"]:
        lat = [" / ".join(f"{r['latency_ms'][p][q]:.1f}" for q in ("p50", "p90", "p99")) + _spread(r['latency_ms'][p])
               for p in parts]
        tp = r["throughput"]
        body.append([r["name"], r["precision"], f"{r['size_mb']:.1f}", f"{r['load_s']:.2f}", f"{r['first_call_ms']:.1f}",
                     *lat, f"{base / r['latency_ms'][first]['p50']:.2f}x", f"{gop / r['latency_ms'][first]['p50'] * 1e3:.0f}",
                     f"{tp['items_per_s']:.1f} {tp['part']}/s @ batch {tp['batch']}", f"{r['peak_rss_mb']:.0f}"])
    return header, body


def _spread(stats: dict) -> str:
    """How far the rounds' medians lie apart, relative to the pooled median."""
    return f" (±{stats['spread'] / 2:.0%})" if stats.get("rounds", 1) > 1 else ""


def load_lines(results: dict) -> list[str]:
    """The load average before and after, and a warning when the machine was busy."""
    load = results.get("load_average")
    if not load:
        return []
    said = (f"Other work: {load.get('busy_cores_before')} cores busy before, {load.get('busy_cores_after')} after; "
            f"load average (1, 5, 15 min): {', '.join(map(str, load['before']))} before, "
            f"{', '.join(map(str, load['after']))} after ({load['rule']})")
    return [("**BUSY MACHINE**: figures may be slow and noisy. " if load["busy"] else "") + said]


def accuracy_table(results: dict) -> tuple[list[str], list[list[str]]]:
    metrics = list(results["rows"][0]["accuracy"])
    header = ["row"] + [m.replace("_", " ") for m in metrics]
    return header, [[r["name"]] + [_fmt(r["accuracy"].get(m)) for m in metrics] for r in results["rows"]]


def peers_table(results: dict):
    """Other runtimes measured on the same weights (or why they are absent)."""
    peers = results.get("peers") or {}
    if not peers:
        return None
    keys = list(dict.fromkeys(k for found in peers.values() for k in found))
    return ["peer"] + [k.replace("_", " ") for k in keys], [[name] + [_fmt(found.get(k)) for k in keys]
                                                             for name, found in peers.items()]


def extra_table(results: dict):
    """Family-specific figures (e.g. automatic-mask time), for the rows that have them."""
    rows = [r for r in results["rows"] if r.get("extra")]
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r["extra"]))
    return ["row"] + [k.replace("_", " ") for k in keys], [[r["name"]] + [_fmt(r["extra"].get(k)) for k in keys] for r in rows]


def _markdown_table(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header, body) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def accuracy_heading(results: dict) -> str:
    """The accuracy section's title, with the integer arithmetic its INT8 figures were measured on
    (x86 without VNNI saturates where VNNI does not: runtime/cpu.py)."""
    m = results["machine"]
    return f"Accuracy against the FP32 PyTorch reference, measured on {m.get('isa') or isa_label(tuple(m['instruction_sets']))}"


def _machine_lines(m: dict) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    peaks = m.get("measured_peaks")
    measured = ([f"Measured peaks ({peaks['how']}, {peaks['size']}^3, {peaks['threads']} threads): "
                 f"FP32 GEMM {peaks['fp32_gflops']:.0f} GFLOP/s, INT8 GEMM {peaks['int8_gops']:.0f} GOP/s"
                 + (f"; memory read {peaks['memory_gbps']:.1f} GB/s (torch sum of 512 MB)" if "memory_gbps" in peaks else "")]
                if peaks else [])
    return measured + [f"CPU: {m['cpu']} ({m['architecture']}), {m['usable_cores']} usable cores, {m['threads']} threads used",
            f"Instruction sets: {', '.join(m['instruction_sets']) or 'none of interest'} "
            f"(INT8 arithmetic: {m.get('isa') or isa_label(tuple(m['instruction_sets']))})",
            f"Memory: {m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}; {m['os']}, Python {m['python']}",
            f"Libraries: {libs}"]


def _goal_lines(goals: list[dict]) -> list[str]:
    return [f"{'MET' if g['met'] else 'MISSED'}: {g['goal']} — measured {g['measured']}" for g in goals]


def plot(results: dict, out_dir: Path) -> Path | None:
    """Per-part p50 latency (bars, p90 as whiskers), one group per row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = results["rows"]
    parts = list(rows[0]["latency_ms"])
    names = [r["name"] for r in rows]  # labelled once, on the left: every part has the same rows
    width = 4 * len(parts) + 0.075 * max(map(len, names))
    fig, axes = plt.subplots(1, len(parts), figsize=(width, 1.2 + 0.3 * len(rows)), squeeze=False, sharey=True)
    for ax, part in zip(axes[0], parts):
        p50 = [r["latency_ms"][part]["p50"] for r in rows]
        p90 = [r["latency_ms"][part]["p90"] for r in rows]
        ax.barh(names, p50, xerr=[[0] * len(rows), [b - a for a, b in zip(p50, p90)]],
                color=["#999999" if r["kind"] == "pytorch" else "#3a7bd5" for r in rows])
        ax.set_xlabel("ms per call, batch 1 (p50, whisker to p90)")
        ax.set_title(f"{results['family']} {part}")
    axes[0][0].invert_yaxis()  # the first row on top; the axis is shared, so once
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def task_text(results: dict) -> str:
    """What the accuracy columns mean: task scores against ground truth where the rows have them."""
    drops = [k[:-len(" drop")] for k in results["rows"][0]["accuracy"] if k.endswith(" drop")]
    if not drops:
        return "With random-weight presets they measure agreement with FP32, not task accuracy."
    settings = results["settings"]
    data = (f"the held-out generated scenes, `{settings['data_made_by']}`" if settings.get("data_made_by")
            else f"`{settings.get('data')}`")
    return (f"Task scores against ground truth ({', '.join(drops)}; data: {data}) stand beside the agreement "
            "figures, each with its drop: FP32 PyTorch's score minus the row's (positive: the row lost)."
            + calibration_text(results))


def calibration_text(results: dict) -> str:
    """What the calibrated rows calibrated on (recorded by rows measured since it was)."""
    found = list(dict.fromkeys(r["calibration"] for r in results["rows"] if r.get("calibration")))
    return f" Calibrated recipes calibrated on {'; '.join(found)}." if found else ""


def write_report(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    picture = plot(results, out_dir)
    lat, acc = latency_table(results), accuracy_table(results)
    w = results["workload"]
    intro = (f"Reference: `{results['reference']}` in PyTorch eager FP32. Accuracy columns compare each row "
             "with that reference on the same inputs (see Workload). " + task_text(results))
    md = [f"# {results['family']} benchmark", "", f"Produced by `{results['command']}` on {results['created']}."
          + _rederived_text(results), "", intro, ""]
    if (results.get("load_average") or {}).get("busy"):
        md += load_lines(results) + [""]
    md += ["## Latency, size and memory", "", _markdown_table(*lat), ""]
    if picture:
        md += [f"![latency]({picture.name})", ""]
    md += [f"## {accuracy_heading(results)}", "", _markdown_table(*acc), ""]
    extra = extra_table(results)
    if extra:
        md += ["## Other measurements", "", _markdown_table(*extra), ""]
    peers = peers_table(results)
    if peers:
        md += ["## Peers on the same weights", "", _markdown_table(*peers), ""]
    if results["goals"]:
        md += ["## Goals", ""] + [f"- {line}" for line in _goal_lines(results["goals"])] + [""]
    md += ["## Machine", ""] + [f"- {line}" for line in _machine_lines(results["machine"]) + load_lines(results)]
    md += ["", "## Workload", ""] + [f"- {k}: {v}" for k, v in w.items()]
    s = results["settings"]
    runs = {p: st["runs"] for p, st in results["rows"][0]["latency_ms"].items()}
    fewer = ", ".join(f"{p}: {n}" for p, n in runs.items() if n != s["runs"])
    rounds = s.get("rounds", 1)
    md += ["", f"Settings: {s['runs']} timed runs after {s['warmup']} warm-up runs per figure"
           + (f" (fewer for slow parts - {fewer} - after 1 warm-up)" if fewer else "") + f", {s['threads']} threads; "
           "each row runs in its own process (peak RSS is that process's, VmHWM)"
           + (f"; the runs are split over {rounds} interleaved rounds (every row, then every row again; a fresh "
              "process each time) and (±x%) is half the range of the rounds' medians over the pooled median"
              if rounds > 1 else "")
           + ("; edgevfm demo's quick look: the family's workload is shortened (see Workload), make report "
              "measures it whole" if s.get("quick") else "") + ". Raw data: `results.json`.", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    _write_html(results, out_dir, lat, acc, intro, picture)
    return report


def _rederived_text(results: dict) -> str:
    again = results.get("goals_rederived")
    return (f" Goals re-derived from these measurements by `{again['command']}` on {again['created']} "
            f"(counted beside them: {again['what']})." if again else "")


def rederive(report_dir: str | Path) -> Path:
    """Recompute a report's goals from its measured rows (``results.json``) and rewrite it: for a
    goal's explanation that gained inputs after the report was measured. The latencies, accuracy and
    memory stay as measured; what an older report lacks is counted again - the reference's matrix
    products (torch's FLOP counter on the checkpoint the report names) and each bundle row's compute
    precision and quantized operations (from the bundle folder the row names, where it still exists).
    Returns the Markdown file."""
    import datetime

    from .api import backend_goals, task_goals
    from .families import BENCH
    from .worker import open_bundle_facts, product_gop, reference_calls

    out_dir = Path(report_dir)
    results = json.loads((out_dir / "results.json").read_text())
    family_bench = BENCH.get(results["family"])(results.get("data"))
    counted = []
    torch_row = next(r for r in results["rows"] if r["kind"] == "pytorch")
    if "product_gop" not in torch_row:
        model, calls = reference_calls(results["reference"], family_bench, results["settings"])
        torch_row["product_gop"] = {part: product_gop(model, call) for part, call in calls.items()
                                    if part in torch_row["gop"]}
        counted.append(f"the matrix products of {results['reference']}, counted by torch's FLOP counter")
    found = [r for r in results["rows"] if r["kind"] == "bundle" and "quantized_ops" not in r
             and _same_bundle(r)]
    for row in found:
        row.update(open_bundle_facts(row["path"]))
    if found:
        counted.append(f"the compute precision and quantized operations of {len(found)} bundles, read from their folders")
    results["goals"] = family_bench.goals(results["rows"], results["machine"]["measured_peaks"],
                                          results.get("peers") or {}, results["machine"]) + \
        backend_goals(family_bench, results["rows"], results["machine"]["instruction_sets"]) + \
        task_goals(family_bench, results["rows"])
    results["goals_rederived"] = {
        "command": f"python -m edgevfm.benchmarks.report {out_dir}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "what": "; ".join(counted) or (results.get("goals_rederived") or {}).get("what") or "nothing counted"}
    return write_report(results, out_dir)


def _same_bundle(row: dict) -> bool:
    """Whether the folder a row names still holds the bundle it measured (same size to the byte),
    not one made since by another run into the same folder."""
    from edgevfm.runtime.bundle import open_bundle
    from edgevfm.runtime.errors import EdgeVfmError

    try:
        return abs(open_bundle(row["path"], verify_hashes=False).size_bytes() / 1e6 - row["size_mb"]) < 1e-6
    except (EdgeVfmError, OSError):
        return False


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.report", description=rederive.__doc__)
    parser.add_argument("report_dir", nargs="+", help="a report folder (holds results.json)")
    args = parser.parse_args(argv)
    for folder in args.report_dir:
        if not (Path(folder) / "results.json").is_file():
            from edgevfm.runtime.errors import UsageError

            raise UsageError(f"{folder} holds no results.json: pass a folder a benchmark report was written to "
                             "(benchmarks/reports/<model>)")
        print(rederive(folder))
    return 0


def _write_html(results, out_dir, lat, acc, intro, picture) -> None:
    img = ""
    if picture:
        data = base64.b64encode(picture.read_bytes()).decode()
        img = f'<img alt="latency" src="data:image/png;base64,{data}">'
    goals = "".join(f"<li>{html.escape(line)}</li>" for line in _goal_lines(results["goals"]))
    machine = "".join(f"<li>{html.escape(line)}</li>" for line in _machine_lines(results["machine"]) + load_lines(results))
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}code{background:#f4f4f4;padding:1px 4px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{results['family']} benchmark</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(results['family'])} benchmark</h1>"
            f"<p>Produced by <code>{html.escape(results['command'])}</code> on {results['created']}."
            f"{html.escape(_rederived_text(results))}</p>"
            f"<p>{html.escape(intro)}</p>"
            + ("".join(f"<p><strong>{html.escape(line.replace('**', ''))}</strong></p>" for line in load_lines(results))
               if (results.get("load_average") or {}).get("busy") else "")
            + f"<h2>Latency, size and memory</h2>{_html_table(*lat)}{img}"
            f"<h2>{html.escape(accuracy_heading(results))}</h2>{_html_table(*acc)}"
            + (f"<h2>Other measurements</h2>{_html_table(*extra_table(results))}" if extra_table(results) else "")
            + (f"<h2>Peers on the same weights</h2>{_html_table(*peers_table(results))}" if peers_table(results) else "")
            + (f"<h2>Goals</h2><ul>{goals}</ul>" if goals else "")
            + f"<h2>Machine</h2><ul>{machine}</ul></body></html>")
    (out_dir / "report.html").write_text(page)


if __name__ == "__main__":
    raise SystemExit(main())
