"""Explicit or stateful KV cache for an OpenVINO decoder: the measurement behind the engine's choice.

The generation engine runs an OpenVINO decoder part stateful: the cache stays inside the compiled
model's infer request (ReadValue / Assign pairs, as optimum-intel exports LLMs; ``runtime/generate.py``).
The alternative feeds the past keys and values as arrays each step and copies the present ones out.
This measures one decode step both ways, with the engine's own compiled models
(``OpenVinoBackend.compiled`` and ``.stateful``), on a bundle's decoder part (an ``ov-*`` bundle's part
with ``past_*`` inputs, e.g. LLaVA's plain-graph ``llm``) after a prefill of each context length,
checks that both give the same logits, and writes a Markdown table::

    python -m edgevfm.benchmarks.kv_cache BUNDLE [--part llm] [--contexts 32 256 1024] [--steps 16] [--rounds 3] [-o kv.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edgevfm.runtime.errors import UsageError

from .tool import command_of, emit, machine_line, made_by


def decoder_backend(bundle: str | Path, part: str, threads: int):
    """The part loaded on its backend as the runtime loads it, its past -> present names and its
    manifest inputs."""
    from edgevfm.runtime.backends import open_backend
    from edgevfm.runtime.bundle import open_bundle

    found = open_bundle(bundle).parts[part]
    pairs = {i["name"]: i["name"].replace("past_", "present_", 1) for i in found.inputs if i["name"].startswith("past_")}
    if not pairs:
        raise UsageError(f"part {part!r} of {bundle} takes no past_* inputs: it is not a KV-cache decoder; pass the "
                         "decoder part with --part (llm for LLaVA's plain graph)")
    if found.backend != "openvino":
        raise UsageError(f"part {part!r} of {bundle} runs on {found.backend}; this compares OpenVINO's two caches: "
                         "pass an ov-* bundle (edgevfm quantize BUNDLE --recipe ov-fp32 -o OUT)")
    backend = open_backend(found.backend, found.path, threads=threads, precision=found.compute or found.precision,
                           digest=found.digest)
    return backend, pairs, found.inputs


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
            threads: int = 2, rounds: int = 3) -> list[dict]:
    """Per-step decode milliseconds with each cache after a prefill of each context length: the
    median of ``steps`` steps pooled over ``rounds`` rounds that alternate the two (a busy moment of
    the machine hurts both alike), the spread of the rounds' medians, and the largest logit
    difference between the two at the last step."""
    backend, pairs, inputs = decoder_backend(bundle, part, threads)
    models = {"explicit": backend.compiled, "stateful": backend.stateful(pairs)}
    empty = {spec["name"]: _empty(spec) for spec in inputs if spec["name"] in pairs}
    rows = []
    for context in contexts:
        rng = np.random.default_rng(context)
        prefill = _feeds(inputs, 0, context, rng)
        tokens = [_feeds(inputs, context + i, 1, rng) for i in range(steps)]
        times, last = {"explicit": [], "stateful": []}, {}
        for _ in range(rounds):
            for kind in times:
                last[kind], cache, ms = _decode(models[kind], kind, prefill, tokens, empty, pairs)
                times[kind].append(ms)
                if cache is not None:
                    explicit_cache = cache
        row = {"context": context, "cache_mb": sum(a.nbytes for a in explicit_cache.values()) / 1e6,
               "logits_max_diff": float(np.abs(last["explicit"] - last["stateful"]).max())}
        for kind, per_round in times.items():
            medians = [float(np.median(r)) for r in per_round]
            row[f"{kind}_ms"] = float(np.median(np.concatenate(per_round)))
            row[f"{kind}_spread"] = (max(medians) - min(medians)) / 2 / row[f"{kind}_ms"]
        rows.append(row)
    return rows


def _decode(model, kind: str, prefill: dict, tokens: list[dict], empty: dict, pairs: dict):
    """One prefill then the decode steps, timed: (last logits, the explicit cache or None, ms per step)."""
    if kind == "explicit":  # past arrays in, present arrays copied out
        request = model.create_infer_request()
        request.infer({**prefill, **empty})
        cache = {past: np.array(request.get_tensor(present).data) for past, present in pairs.items()}
    else:  # the engine's: the cache stays in the request, empty for batch 1 to start
        _, heads, _, dim = next(iter(empty.values())).shape
        stateful, cache = model.request(1, heads, dim), None
        stateful.run(prefill, "logits")
    times = []
    for feed in tokens:
        start = time.perf_counter()
        if cache is None:
            logits = stateful.run(feed, "logits")
        else:
            request.infer({**feed, **cache})
            cache = {past: np.array(request.get_tensor(present).data) for past, present in pairs.items()}
            logits = np.array(request.get_tensor("logits").data)
        times.append(time.perf_counter() - start)
    return logits, cache, np.array(times) * 1e3


def report(rows: list[dict], bundle, part: str, threads: int, command: str) -> str:
    from edgevfm.runtime.bundle import open_bundle

    manifest = open_bundle(bundle).manifest
    lines = [f"# KV cache: explicit or stateful, {bundle} part {part!r}", "",
             f"Produced by `{command}`. {made_by(manifest)}", "",
             "| context tokens | cache MB | explicit ms/step (spread) | stateful ms/step (spread) | explicit / stateful "
             "| logits max diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['context']} | {r['cache_mb']:.1f} | {r['explicit_ms']:.2f} (±{r['explicit_spread']:.0%}) | "
                     f"{r['stateful_ms']:.2f} (±{r['stateful_spread']:.0%}) | {r['explicit_ms'] / r['stateful_ms']:.2f}x | "
                     f"{r['logits_max_diff']:.1e} |")
    lines += ["", f"{machine_line(manifest, part, threads)}; batch 1; median of every decode step over rounds that "
              "alternate the two (each round: one prefill, then the steps); spread: half the range of the rounds' medians."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.kv_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--part", default="llm")
    parser.add_argument("--contexts", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.bundle, args.part, args.contexts, args.steps, args.threads, args.rounds)
    return emit(report(rows, args.bundle, args.part, args.threads, command_of("kv_cache", argv)), args.output)


if __name__ == "__main__":
    sys.exit(main())
