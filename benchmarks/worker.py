"""One benchmark row, measured in a fresh process so that its load time and peak memory are its
own: the PyTorch reference or one bundle, on the family's workload."""

from __future__ import annotations

import os
from pathlib import Path

from .timing import current_rss_mb, latency, peak_rss_mb, runs_per_round, timed


def measure_row(task: dict) -> dict:
    """``task``: kind ("pytorch" | "bundle"), target (model or bundle path), family, data,
    threads, runs, warmup, batch. Returns the row's measurements and its raw outputs."""
    from .families import BENCH

    threads = task["threads"]
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    bench = BENCH.get(task["family"])(task["data"])
    if task.get("quick"):
        bench.quicken()
    rss_before = current_rss_mb()
    if task["kind"] == "pytorch":
        row = _open_torch(task, bench)
    else:
        row = _open_bundle(task, bench)
    runner = row.pop("runner")
    part_calls, (unit, items, throughput_call) = bench.calls(runner, task["batch"])
    if task["kind"] == "pytorch":
        row["gop"] = {part: gemm_gop(runner.model, call) for part, call in part_calls.items()}
        if task.get("outputs", True):  # once per row: counting every product is slow (SAM: 12 s)
            row["product_gop"] = {part: product_gop(runner.model, call) for part, call in part_calls.items()}
    first = next(iter(part_calls.values()))
    _, row["first_call_ms"] = timed(first)
    row["first_call_ms"] *= 1e3
    # the process's peak so far: loading and the first part's calls (SAM: its encoder run), before
    # the rest of the workload (prompts, automatic masks) adds its own
    row["first_part_peak_rss_mb"] = peak_rss_mb()
    # parts that take seconds per call get fewer runs: the cap is for all rounds together
    caps = {part: runs_per_round(cap, task.get("rounds", 1)) for part, cap in bench.max_runs.items()}
    row["latency_ms"] = {part: latency(call, min(task["runs"], caps.get(part, task["runs"])),
                                       min(task["warmup"], 1 if part in caps else task["warmup"]))
                         for part, call in part_calls.items()}
    throughput = latency(throughput_call, max(3, task["runs"] // 5), 1)
    row["throughput"] = {"part": unit, "batch": items, "items_per_s": items / (throughput["p50"] / 1e3)}
    if task.get("outputs", True):  # outputs and extras once per row (the first round): they do not change
        row["outputs"] = bench.outputs(runner)
        row["extra"] = bench.extra(runner)
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


def product_gop(model, call) -> float:
    """Giga-operations of every matrix product in one ``call``: the Linear/Conv layers of
    :func:`gemm_gop` plus attention's activation x activation products (torch's FLOP counter). Run
    without gradients: the counter's module tracker hooks the backward graph of any input that
    requires one, and trips over a parameter fed to a layer as it is (BLIP-2's query tokens)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    wanted = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in wanted:
            parameter.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call()
    finally:
        for parameter, flag in wanted:
            parameter.requires_grad_(flag)
    return counter.get_total_flops() / 1e9


# operations that move or reshape a quantized tensor on its way to the operation that computes with it
_PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Concat", "Convert", "Split", "VariadicSplit"}
# operations that turn a stored constant into a weight (dequantization, layout)
_WEIGHT_CHAIN = _PASS_THROUGH | {"Const", "FakeQuantize", "Multiply", "Subtract"}


def quantized_ops(part_path: str | Path) -> dict[str, int]:
    """The operations of an OpenVINO IR that compute on a quantized activation (a FakeQuantize
    feeds them, through reshapes and transposes), by type; a MatMul counts as ``MatMul (weights)``
    when its other input is a stored weight and as ``MatMul (activations)`` when both are computed
    (attention's products). What a quantization recipe left in integer arithmetic, read from the IR's
    XML without OpenVINO. Empty for a part that is not OpenVINO IR."""
    import collections
    import xml.etree.ElementTree as ET

    path = Path(part_path)
    if path.suffix != ".xml":
        return {}
    root = ET.parse(path).getroot()
    kinds = {layer.get("id"): layer.get("type") for layer in root.iter("layer")}
    consumers, producers = collections.defaultdict(set), collections.defaultdict(set)
    for edge in root.iter("edge"):
        consumers[edge.get("from-layer")].add(edge.get("to-layer"))
        producers[edge.get("to-layer")].add(edge.get("from-layer"))

    def stored(layer: str, seen: set) -> bool:  # does this input come from constants alone?
        if kinds[layer] == "Const":
            return True
        if kinds[layer] not in _WEIGHT_CHAIN or layer in seen:
            return False
        seen.add(layer)
        return all(stored(p, seen) for p in producers[layer])

    reached, todo, seen = set(), [c for fq, kind in kinds.items() if kind == "FakeQuantize"
                                  and not stored(fq, set()) for c in consumers[fq]], set()
    while todo:
        layer = todo.pop()
        if layer in seen:
            continue
        seen.add(layer)
        if kinds[layer] in _PASS_THROUGH:
            todo.extend(consumers[layer])
        elif kinds[layer] not in ("ShapeOf", "FakeQuantize", "Result"):
            reached.add(layer)
    counted = collections.Counter()
    for layer in reached:
        kind = kinds[layer]
        if kind == "MatMul":
            kind += " (weights)" if any(stored(p, set()) for p in producers[layer]) else " (activations)"
        counted[kind] += 1
    return dict(sorted(counted.items()))


def _open_torch(task: dict, bench) -> dict:
    import torch

    from edgevfm.export.checkpoint import load_checkpoint

    torch.set_num_threads(task["threads"])
    checkpoint, load_s = timed(lambda: load_checkpoint(task["target"]))
    params = sum(p.numel() * p.element_size() for p in checkpoint.model.parameters())
    return {"name": "pytorch eager fp32", "kind": "pytorch", "backend": "torch eager", "precision": "fp32",
            "recipe": None, "path": None, "size_mb": params / 1e6, "load_s": load_s,
            "config_sha256": checkpoint.source["config_sha256"], "runner": bench.torch_runner(checkpoint)}


def open_bundle_facts(bundle) -> dict:
    """What a row records about its bundle's parts beyond their precision: the precision their float
    operations run at (where it differs), and what NNCF quantized in the OpenVINO ones."""
    from edgevfm.runtime.bundle import open_bundle

    bundle = open_bundle(bundle, verify_hashes=False) if isinstance(bundle, (str, Path)) else bundle
    return {"compute": {name: part.compute for name, part in bundle.parts.items() if part.compute},
            "quantized_ops": {name: quantized_ops(part.path) for name, part in bundle.parts.items()
                              if part.backend == "openvino"}}


def parts_mb(bundle) -> dict[str, float]:
    """Each part's size on disk in MB (its graph and external-data files), kept in the row so that a
    report's goals can be derived again once the bundle folder is gone."""
    sizes = {}
    for name, part in bundle.manifest["parts"].items():
        files = [part["file"], *(part.get("data") or [])]
        sizes[name] = sum((bundle.path / f).stat().st_size for f in files) / 1e6
    return sizes


def reference_calls(reference: str, bench, settings: dict) -> tuple:
    """The reference's model and the family's calls on it, by part, for counting their work."""
    runner = _open_torch(dict(settings, target=reference), bench)["runner"]
    return runner.model, bench.calls(runner, settings["batch"])[0]


def _open_bundle(task: dict, bench) -> dict:
    from edgevfm.runtime.tensorrt import SIMULATED

    from .families.base import load_on_this_cpu

    pipeline, load_s = timed(lambda: load_on_this_cpu(task["target"], task["threads"]))
    simulated = any(getattr(part, "simulated", False) for part in pipeline.parts.values())
    bundle = pipeline.bundle
    recipe = (bundle.manifest.get("recipe") or {}).get("name")
    auto = (bundle.manifest.get("recipe") or {}).get("auto") or {}
    precisions = sorted({p.precision for p in bundle.parts.values()})
    backends = sorted({p.backend for p in bundle.parts.values()})
    # an export choice other than the default names itself (LLaVA's plain llm graph)
    from edgevfm.export.spec import DEFAULT_EXPORT_OPTIONS

    from .scene_data import calibration_source

    choices = {k: v for k, v in ((bundle.manifest.get("export") or {}).get("options") or {}).items()
               if DEFAULT_EXPORT_OPTIONS.get(k) != v}
    label = "".join(f" ({k}={v})" for k, v in sorted(choices.items()))
    shown = f"auto ({auto.get('chosen')})" if auto else recipe or "fp32"
    if simulated:
        label += f" ({SIMULATED})"
    return {"name": f"{'/'.join(backends)} {shown}{label}", **({"simulated": SIMULATED} if simulated else {}),
            "kind": "bundle", "backend": "/".join(backends),
            "precision": "/".join(precisions), "recipe": recipe, "path": str(bundle.path), "export_choices": choices,
            "parts": {name: part.precision for name, part in bundle.parts.items()},
            **open_bundle_facts(bundle),
            "size_mb": bundle.size_bytes() / 1e6, "parts_mb": parts_mb(bundle), "load_s": load_s,
            "config_sha256": bundle.manifest["source"].get("config_sha256"), "runner": bench.bundle_runner(pipeline),
            "calibration": calibration_source(bundle.manifest.get("calibration")),
            **({"auto_chosen": auto.get("chosen"), "auto_floors": auto.get("floors")} if auto else {})}
