"""Explicit or stateful KV cache for an OpenVINO decoder, chosen by measurement.

The generation engine drives an OpenVINO decoder part with an explicit cache: each step feeds the
past keys and values as arrays and copies the present ones out (``runtime/generate.py``). OpenVINO
can instead keep the cache inside the compiled model ("stateful": ReadValue / Assign pairs, as
optimum-intel exports LLMs), which saves those copies. This measures one decode step both ways on a
bundle's decoder part (a part with ``past_*`` inputs: a plain-graph LLaVA ``llm``, an ``ov-*``
bundle's IR or an FP32 bundle's ONNX), after a prefill of each context length, checks that both
give the same logits, and writes a Markdown table::

    python -m edgevfm.benchmarks.kv_cache BUNDLE [--part llm] [--contexts 32 256 1024] [--steps 16] [-o kv.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgevfm.runtime.errors import UsageError

from .machine import machine_info


def decoder_model(bundle: str | Path, part: str):
    """The part as an OpenVINO model, its past -> present tensor names and its manifest inputs."""
    import openvino as ov

    from edgevfm.runtime.bundle import open_bundle

    found = open_bundle(bundle).parts[part]
    pairs = {i["name"]: i["name"].replace("past_", "present_", 1) for i in found.inputs if i["name"].startswith("past_")}
    if not pairs:
        raise UsageError(f"part {part!r} of {bundle} takes no past_* inputs: it is not a KV-cache decoder; pass the "
                         "decoder part with --part (llm for LLaVA's plain graph)")
    return ov.Core().read_model(str(found.path)), pairs, found.inputs


def make_stateful(model, pairs: dict[str, str]):
    """The cache moved into the model: each past input / present output pair becomes a state."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    params = {n: p for p in model.get_parameters() for n in p.output(0).get_names()}
    results = {n: r for r in model.get_results() for n in r.input_value(0).get_names()}
    apply_make_stateful_transformation(model, [(params[past], results[present]) for past, present in pairs.items()])
    return model


def _feeds(inputs: list[dict], context: int, length: int, rng) -> dict:
    """Inputs (as the manifest lists them) for ``length`` new tokens after ``context`` cached ones, batch 1."""
    feeds = {}
    for spec in inputs:
        name, shape = spec["name"], spec["shape"]
        if name.startswith("past_"):
            continue
        if name == "attention_mask":
            feeds[name] = np.ones((1, context + length), np.int64)
        elif name == "position_ids":
            feeds[name] = np.arange(context, context + length, dtype=np.int64)[None]
        elif spec["dtype"].startswith("int"):
            feeds[name] = rng.integers(0, 100, (1, length), dtype=np.int64)
        else:
            feeds[name] = rng.standard_normal((1, length, *shape[2:])).astype(np.float32) * 0.1
    return feeds


def _empty(spec: dict) -> np.ndarray:
    """A cache of no tokens, batch 1: (1, heads, 0, head_dim)."""
    return np.zeros([1, *(d if isinstance(d, int) else 0 for d in spec["shape"][1:])], np.float32)


def measure(bundle: str | Path, part: str = "llm", contexts=(32, 256, 1024), steps: int = 16,
            threads: int = 2) -> list[dict]:
    """Per-step decode milliseconds (median of ``steps``) with each cache, after a prefill of each
    context length; the largest logit difference between the two at the last step."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    model, pairs, inputs = decoder_model(bundle, part)
    explicit = core.compile_model(model, "CPU", config)
    stateful = core.compile_model(make_stateful(decoder_model(bundle, part)[0], pairs), "CPU", config)
    logits_name = next(n for p in explicit.outputs for n in p.get_names() if n == "logits")
    rows = []
    for context in contexts:
        rng = np.random.default_rng(context)
        prefill = _feeds(inputs, 0, context, rng)
        tokens = [_feeds(inputs, context + i, 1, rng) for i in range(steps)]
        # explicit: what the engine does, past arrays in, present arrays copied out
        request = explicit.create_infer_request()
        empty = {spec["name"]: _empty(spec) for spec in inputs if spec["name"] in pairs}
        request.infer({**prefill, **empty})
        cache = {past: np.array(request.get_tensor(present).data) for past, present in pairs.items()}
        times = []
        for feed in tokens:
            start = time.perf_counter()
            request.infer({**feed, **cache})
            cache = {past: np.array(request.get_tensor(present).data) for past, present in pairs.items()}
            logits = np.array(request.get_tensor(logits_name).data)
            times.append(time.perf_counter() - start)
        explicit_ms, explicit_logits = float(np.median(times)) * 1e3, logits
        # stateful: the cache stays in the request
        request = stateful.create_infer_request()
        for state in request.query_state():  # an empty cache of batch 1 (its default is batch 0)
            _, heads, _, dim = state.state.shape
            state.state = ov.Tensor(np.zeros((1, heads, 0, dim), np.float32))
        request.infer(prefill)
        times = []
        for feed in tokens:
            start = time.perf_counter()
            request.infer(feed)
            logits = np.array(request.get_tensor(logits_name).data)
            times.append(time.perf_counter() - start)
        stateful_ms = float(np.median(times)) * 1e3
        rows.append({"context": context, "explicit_ms": explicit_ms, "stateful_ms": stateful_ms,
                     "cache_mb": sum(a.nbytes for a in cache.values()) / 1e6,
                     "logits_max_diff": float(np.abs(logits - explicit_logits).max())})
    return rows


def report(rows: list[dict], bundle, part: str, threads: int, command: str) -> str:
    machine = machine_info(threads)
    lines = [f"# KV cache: explicit or stateful, {bundle} part {part!r}", "",
             f"Produced by `{command}`.", "",
             "| context tokens | cache MB | explicit ms/step | stateful ms/step | explicit / stateful | logits max diff |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['context']} | {r['cache_mb']:.1f} | {r['explicit_ms']:.2f} | {r['stateful_ms']:.2f} | "
                     f"{r['explicit_ms'] / r['stateful_ms']:.2f}x | {r['logits_max_diff']:.1e} |")
    lines += ["", f"CPU: {machine.get('cpu')}; instruction sets: {', '.join(machine.get('instruction_sets', []))}; "
              f"{threads} threads; FP32 inference precision; batch 1; median of the decode steps after one prefill."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.kv_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--part", default="llm")
    parser.add_argument("--contexts", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.bundle, args.part, args.contexts, args.steps, args.threads)
    command = "python -m edgevfm.benchmarks.kv_cache " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, args.bundle, args.part, args.threads, command)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
