"""One benchmark row, measured in a fresh process so that its load time and peak memory are its
own: the PyTorch reference or one bundle, on the family's workload."""

from __future__ import annotations

import os

from .timing import current_rss_mb, latency, peak_rss_mb, runs_per_round, timed


def measure_row(task: dict) -> dict:
    """``task``: kind ("pytorch" | "bundle"), target (model or bundle path), family, data,
    threads, runs, warmup, batch. Returns the row's measurements and its raw outputs."""
    from .families import BENCH

    threads = task["threads"]
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    bench = BENCH.get(task["family"])(task["data"])
    rss_before = current_rss_mb()
    if task["kind"] == "pytorch":
        row = _open_torch(task, bench)
    else:
        row = _open_bundle(task, bench)
    runner = row.pop("runner")
    part_calls, (unit, items, throughput_call) = bench.calls(runner, task["batch"])
    if task["kind"] == "pytorch":
        row["gop"] = {part: gemm_gop(runner.model, call) for part, call in part_calls.items()}
    first = next(iter(part_calls.values()))
    _, row["first_call_ms"] = timed(first)
    row["first_call_ms"] *= 1e3
    # the process's peak so far: loading and the first part's calls (SAM: its encoder run), before
    # the rest of the workload (prompts, automatic masks) adds its own
    row["first_part_peak_rss_mb"] = peak_rss_mb()
    # parts that take seconds per call get fewer runs: the cap is for all rounds together
    caps = {part: runs_per_round(cap, task.get("rounds", 1)) for part, cap in getattr(bench, "max_runs", {}).items()}
    row["latency_ms"] = {part: latency(call, min(task["runs"], caps.get(part, task["runs"])),
                                       min(task["warmup"], 1 if part in caps else task["warmup"]))
                         for part, call in part_calls.items()}
    throughput = latency(throughput_call, max(3, task["runs"] // 5), 1)
    row["throughput"] = {"part": unit, "batch": items, "items_per_s": items / (throughput["p50"] / 1e3)}
    if task.get("outputs", True):  # outputs and extras once per row (the first round): they do not change
        row["outputs"] = bench.outputs(runner)
        row["extra"] = bench.extra(runner) if hasattr(bench, "extra") else {}
    row["rss_before_load_mb"] = rss_before
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def measure_peers(task: dict) -> dict:
    """The family's peers (other runtimes on the same weights), in their own process."""
    from .families import BENCH

    bench = BENCH.get(task["family"])(task["data"])
    return bench.peers(task["target"], task["threads"], task["runs"])


def gemm_gop(model, call) -> float:
    """Giga-operations (2 x multiply-adds) of the Linear, Conv and transposed-Conv layers in one
    ``call`` (attention's activation x activation products are not counted)."""
    import torch

    total = [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            total[0] += output.numel() * module.in_features
        elif isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += output.numel() * k
        elif isinstance(module, torch.nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            total[0] += inputs[0].numel() * k

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * total[0] / 1e9


def _open_torch(task: dict, bench) -> dict:
    import torch

    from edgevfm.export.checkpoint import load_checkpoint

    torch.set_num_threads(task["threads"])
    checkpoint, load_s = timed(lambda: load_checkpoint(task["target"]))
    params = sum(p.numel() * p.element_size() for p in checkpoint.model.parameters())
    return {"name": "pytorch eager fp32", "kind": "pytorch", "backend": "torch eager", "precision": "fp32",
            "recipe": None, "path": None, "size_mb": params / 1e6, "load_s": load_s,
            "config_sha256": checkpoint.source["config_sha256"], "runner": bench.torch_runner(checkpoint)}


def _open_bundle(task: dict, bench) -> dict:
    from edgevfm.runtime import load

    pipeline, load_s = timed(lambda: load(task["target"], threads=task["threads"]))
    bundle = pipeline.bundle
    recipe = (bundle.manifest.get("recipe") or {}).get("name")
    auto = (bundle.manifest.get("recipe") or {}).get("auto") or {}
    precisions = sorted({p.precision for p in bundle.parts.values()})
    backends = sorted({p.backend for p in bundle.parts.values()})
    # an export choice other than the default names itself (LLaVA's plain llm graph)
    from edgevfm.export.spec import DEFAULT_EXPORT_OPTIONS

    choices = {k: v for k, v in ((bundle.manifest.get("export") or {}).get("options") or {}).items()
               if DEFAULT_EXPORT_OPTIONS.get(k) != v}
    label = "".join(f" ({k}={v})" for k, v in sorted(choices.items()))
    shown = f"auto ({auto.get('chosen')})" if auto else recipe or "fp32"
    return {"name": f"{'/'.join(backends)} {shown}{label}", "kind": "bundle", "backend": "/".join(backends),
            "precision": "/".join(precisions), "recipe": recipe, "path": str(bundle.path), "export_choices": choices,
            "parts": {name: part.precision for name, part in bundle.parts.items()},
            "size_mb": bundle.size_bytes() / 1e6, "load_s": load_s,
            "config_sha256": bundle.manifest["source"].get("config_sha256"), "runner": bench.bundle_runner(pipeline),
            **({"auto_chosen": auto.get("chosen"), "auto_floors": auto.get("floors")} if auto else {})}
