"""The offline demo: for each model, export -> quantize (every recipe of its family) -> run ->
bench, on random-weight presets with the real architectures' sizes; says where the reports are."""

from __future__ import annotations

import time
from pathlib import Path

from edgevfm.export.api import export
from edgevfm.quantize.api import quantize
from edgevfm.quantize.recipes import recipes_for
from edgevfm.runtime import open_bundle

from .api import bench
from .auto import quantize_auto
from .commands import DEFAULT_MODELS
from .families import BENCH
from .scene_data import calibration_set, scene_trained


def run_demo(out: str | Path = "demo-out", models=DEFAULT_MODELS, report_dir: str | Path | None = None,
             runs: int | None = None, threads: int = 2, variants: bool = False, rounds: int = 1) -> list[dict]:
    """``runs``: timed runs per figure (default: each family's ``demo_runs``), split over ``rounds``
    interleaved rounds. ``variants`` also exports the family's ``export_variants`` (other export
    choices, e.g. LLaVA's plain llm graph) and quantizes each with ``variant_recipes``, so the
    report measures the choice, and, for families with ``auto_in_report``, adds the bundle
    ``--recipe auto`` picks on this machine. Each model's time, step by step, goes to
    ``REPORT_DIR/demo.md`` (:func:`write_summary`)."""
    out = Path(out)
    report_root = Path(report_dir) if report_dir else out / "report"
    results, timings = [], []
    begun = time.perf_counter()
    for model in models:
        name = model.split(":")[-1].replace("/", "--")  # random:/trained: presets, hub ids, folders
        folder, reports = out / name, report_root / name
        print(f"== {model}")
        started = time.perf_counter()
        steps = {}
        print(f"[1/4] export -> {folder / 'fp32'}")
        bundles = [export(model, folder / "fp32", force=True)]
        fp32 = open_bundle(bundles[0], verify_hashes=False)
        family, family_bench = fp32.family, BENCH.get(fp32.family)
        # a preset trained on the scenes calibrates on scenes of its training split, as a user calibrates
        # on the domain the model serves (photos otherwise)
        calib = calibration_set(family, out / "scenes", fp32.manifest.get("task")) if scene_trained(model) else None
        made = {}
        # make demo (a newcomer's first minutes) takes the family's quick_recipes where it names
        # some; make report (variants) takes every recipe the family measures (demo_recipes or all)
        recipes = family_bench.demo_recipes or recipes_for(family)
        if not variants:
            recipes = family_bench.quick_recipes or recipes
        steps["export"] = time.perf_counter() - started
        for recipe in recipes:
            print(f"[2/4] quantize --recipe {recipe} -> {folder / recipe}")
            made[recipe] = quantize(bundles[0], recipe, folder / recipe, calib=calib, force=True, quick=not variants)
        bundles += list(made.values())
        for label, options in (family_bench.export_variants if variants else {}).items():
            print(f"[1/4] export ({label}) -> {folder / ('fp32-' + label)}")
            variant = export(model, folder / f"fp32-{label}", force=True, **options)
            bundles.append(variant)
            for recipe in family_bench.variant_recipes:
                print(f"[2/4] quantize ({label}) --recipe {recipe} -> {folder / (recipe + '-' + label)}")
                bundles.append(quantize(variant, recipe, folder / f"{recipe}-{label}", calib=calib, force=True))
        if variants and family_bench.auto_in_report:
            print(f"[2/4] quantize --recipe auto -> {folder / 'auto'} (measures the bundles above here)")
            # a preset trained on the scenes: chosen by task score on its held-out split (the family's INT8 goal)
            task = {"max_task_drop": min(family_bench.task_goals.values())} if scene_trained(model) else {}
            bundles.append(quantize_auto(bundles[0], folder / "auto", force=True, threads=threads, prebuilt=made,
                                         calib=calib, **task))
        steps["quantize"] = time.perf_counter() - started - sum(steps.values())
        print("[3/4] run")
        family_bench.demo(bundles, reports, threads)
        steps["run"] = time.perf_counter() - started - sum(steps.values())
        n = runs or family_bench.runs(variants)
        command = (f"edgevfm demo -o {out} --model {model} --report-dir {report_root} --runs {n} --threads {threads}"
                   + f" --rounds {rounds}" + (" --variants" if variants else ""))
        print(f"[4/4] bench {len(bundles)} bundles against PyTorch eager FP32 ({threads} threads, {n} runs)")
        result = bench(bundles, reference=model, out_dir=reports, threads=threads, runs=n, command=command,
                       rounds=rounds, quick=not variants)
        print(f"      {headline(result, family_bench)}")
        steps["bench"] = time.perf_counter() - started - sum(steps.values())
        print(f"report: {result['report']} (and report.html, results.json beside it); {model} took "
              f"{time.perf_counter() - started:.0f} s")
        results.append(result)
        timings.append({"model": model, "family": family, "bundles": len(bundles), "seconds": steps})
    models_done = time.perf_counter()
    if "trained:clip-shapes" in models:  # clips found by a text: the mean of their frames' features
        from .video import demo as video_demo

        video_demo(out / "clip-shapes" / "fp32", out / "videos", threads)
    if {"trained:sam-shapes", "trained:clip-shapes"} <= set(models):  # SAM's masks named by CLIP
        from .text_segment import demo as text_segment_demo

        text_segment_demo(out / "sam-shapes" / "fp32", out / "clip-shapes" / "fp32", report_root / "sam-shapes",
                          threads)
    if {"trained:sam-shapes", "trained:clip-shapes"} <= set(models):  # both behind edgevfm serve, over HTTP
        from .serve import demo as serve_demo, serve_installed

        if not serve_installed():
            print("== edgevfm serve: skipped, the [serve] extra is not installed (pip install 'edgevfm[serve]')")
        else:
            serve_demo(out / "clip-shapes" / "fp32", out / "sam-shapes" / "fp32", threads)
    if "trained:clip-shapes" in models:  # over a folder of scenes as a Ray Data job
        from .batch_demo import demo as batch_demo, scale_installed

        if not scale_installed():
            print("== edgevfm batch: skipped, the [scale] extra is not installed (pip install 'edgevfm[scale]')")
        else:
            batch_demo(out / "clip-shapes" / "fp32", out / "batch")
    summary = write_summary(report_root, timings, time.perf_counter() - begun,
                            demo_command(out, models, report_dir, runs, threads, variants, rounds), threads,
                            applications_s=time.perf_counter() - models_done)
    print(f"the demo took {(time.perf_counter() - begun) / 60:.1f} minutes: {summary}")
    return results


def headline(result: dict, family_bench) -> str:
    """One line for the console: the fastest bundle within the family's floors against FP32 PyTorch
    (latency: the sum of its parts' p50), its speed-up over the FP32 bundle and its task score. The
    goals, met or not, stay in the report (a tiny model's encoder cannot be "2x faster" and is no
    news to a newcomer). Where no quantized bundle stays within the floors, the line also names the
    fastest one outside them, its speed-up per part (LLaVA's decode gains where its prefill does
    not) and what it missed by: what quantizing would buy, and cost."""
    from .auto import floor_text, floors_for, passes, quality, quality_text

    rows = [r for r in result["rows"] if r["kind"] == "bundle"]
    total = lambda r: sum(p["p50"] for p in r["latency_ms"].values())
    fp32 = next((r for r in rows if r["recipe"] is None), None)
    floors = family_bench.auto_floor  # with task scores, the task goals: what a user loses
    goals = [most for k, most in family_bench.task_goals.items() if f"{k} drop" in rows[0]["accuracy"]]
    if goals:  # the goals of the task scores these bundles have (BLIP: its bundles' task's)
        floors = floors_for(family_bench, result["family"], None, None, min(goals))
    within = [r for r in rows if passes(quality(family_bench, r["accuracy"]), floors)]
    if not within or fp32 is None:
        return "no bundle stayed within the family's floors: see the report"
    best = min(within, key=total)
    line = (f"fastest within the floors ({floor_text(floors)}): {best['name']}, "
            f"{total(fp32) / total(best):.2f}x the FP32 bundle's speed")
    task = [k for k in family_bench.task_keys if k in best["accuracy"]]
    if task:
        line += ", " + ", ".join(f"{k} {best['accuracy'][k]:.3f} (FP32 PyTorch {best['accuracy'][k] + best['accuracy'][k + ' drop']:.3f})"
                                 for k in task[:2])
    outside = [r for r in rows if r["recipe"] is not None and r not in within]
    if best is fp32 and outside:
        near = min(outside, key=total)
        parts = near["latency_ms"]
        speed = ", ".join(f"{p} {fp32['latency_ms'][p]['p50'] / parts[p]['p50']:.2f}x" for p in parts
                          if p in fp32["latency_ms"]) if len(parts) > 1 else f"{total(fp32) / total(near):.2f}x"
        line += (f"; the fastest outside them: {near['name']}, {speed}, "
                 f"{quality_text(quality(family_bench, near['accuracy']))}")
    return line


def write_summary(report_root: Path, timings: list[dict], total_s: float, command: str, threads: int,
                  applications_s: float = 0.0) -> Path:
    """``demo.md`` and ``demo.json``: each model's seconds per step (export, quantize every recipe,
    run, bench), the applications' after them (video retrieval, text prompts, serve, batch), the
    total, the command and the machine (CPU, instruction sets, INT8 arithmetic), so that the demo's
    time on a kind of CPU is a report anyone can make again."""
    import datetime
    import json

    from .machine import machine_info

    machine = machine_info(threads)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = ["# edgevfm demo: time per model", "",
             f"Produced by `{command}` on {created}, after the set-up (`make demo` runs it once .venv exists).", "",
             "| model | family | bundles | export s | quantize s | run s | bench s | total s |",
             "|---|---|---|---|---|---|---|---|"]
    for t in timings:
        s = t["seconds"]
        lines.append(f"| {t['model']} | {t['family']} | {t['bundles']} | {s['export']:.0f} | {s['quantize']:.0f} | "
                     f"{s['run']:.0f} | {s['bench']:.0f} | {sum(s.values()):.0f} |")
    lines += ["", f"After the models, the applications on their bundles (video retrieval, text prompts, edgevfm serve, "
              f"edgevfm batch): {applications_s:.0f} s.", "", f"Total: {total_s / 60:.1f} minutes.", "", "## Machine", "",
              f"- CPU: {machine['cpu']} ({machine['usable_cores']} usable cores, {threads} threads)",
              f"- INT8 arithmetic: {machine['isa']}; instruction sets: {', '.join(machine['instruction_sets'])}",
              f"- Memory: {machine['memory_gib']} GiB; {machine['os']}, Python {machine['python']}", ""]
    report_root.mkdir(parents=True, exist_ok=True)
    (report_root / "demo.json").write_text(json.dumps({"command": command, "created": created, "models": timings,
                                                       "applications_s": applications_s, "total_s": total_s,
                                                       "machine": machine}, indent=2) + "\n")
    (report_root / "demo.md").write_text("\n".join(lines))
    return report_root / "demo.md"


def demo_command(out, models, report_dir, runs, threads, variants, rounds) -> str:
    words = ["edgevfm", "demo", "-o", str(out)]
    if tuple(models) != tuple(DEFAULT_MODELS):
        words += [w for m in models for w in ("--model", m)]
    if report_dir:
        words += ["--report-dir", str(report_dir)]
    if runs:
        words += ["--runs", str(runs)]
    words += ["--threads", str(threads), "--rounds", str(rounds)] + (["--variants"] if variants else [])
    return " ".join(words)
