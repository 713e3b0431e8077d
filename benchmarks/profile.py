"""Where an OpenVINO part spends its time: OpenVINO's own per-node profile of a call, summed by node
type and kernel, with the slowest nodes. The figures behind a recipe's "what is left" (which
operations still run in float, which kernels a quantized layer fell back to)::

    python -m edgevfm.benchmarks.profile BUNDLE --part image_encoder [--threads 2] [--runs 2] [--top 12] [-o profile.md]

The part is compiled as the runtime compiles it (its precision or compute, threads, the latency
hint, the sizes its pipeline always runs it at) with profiling on, and fed the manifest's inputs at their fixed sizes filled with seeded
random values (a dynamic dimension takes 1): timing does not depend on the values. One call warms
up; the profile is the mean of ``runs`` calls after it.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

from edgevfm.runtime.errors import UsageError

from .tool import command_of, emit, machine_line, made_by


def _feeds(inputs: list[dict], rng) -> dict:
    feeds = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) else 1 for d in spec["shape"]]
        if spec["dtype"].startswith("int"):
            feeds[spec["name"]] = rng.integers(0, 2, shape).astype(spec["dtype"])
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def measure(bundle: str | Path, part: str, threads: int = 2, runs: int = 2) -> dict:
    """{"call_ms", "by_kind": [(node type, kernel, ms, count)], "nodes": [(ms, type, kernel, name)]},
    times per call, slowest first."""
    from edgevfm.runtime import families  # noqa: F401  (registers the pipelines)
    from edgevfm.runtime.backends import OpenVinoBackend
    from edgevfm.runtime.bundle import open_bundle
    from edgevfm.runtime.pipeline import PIPELINES

    opened = open_bundle(bundle)
    parts = opened.parts
    if part not in parts:
        raise UsageError(f"bundle {bundle} has no part {part!r}: its parts are {sorted(parts)}")
    found = parts[part]
    if found.backend != "openvino":
        raise UsageError(f"part {part!r} of {bundle} runs on {found.backend}; this reads OpenVINO's profile: pass an "
                         "ov-* bundle (edgevfm quantize BUNDLE --recipe ov-fp32 -o OUT)")
    options = PIPELINES.get(opened.manifest["family"]).part_options(part, found)
    request = OpenVinoBackend(found.path, threads=threads, profile=True, **options).compiled.create_infer_request()
    feeds = _feeds(found.inputs, np.random.default_rng(0))
    request.infer(feeds)
    kinds, counts, nodes, calls = collections.Counter(), collections.Counter(), collections.Counter(), []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer(feeds)
        calls.append((time.perf_counter() - start) * 1e3)
        for node in request.profiling_info:
            ms = node.real_time.total_seconds() * 1e3 / runs
            kinds[node.node_type, node.exec_type] += ms
            counts[node.node_type, node.exec_type] += 1 / runs
            nodes[node.node_type, node.exec_type, node.node_name] += ms
    return {"call_ms": float(np.median(calls)),
            "by_kind": [(t, k, ms, round(counts[t, k])) for (t, k), ms in kinds.most_common()],
            "nodes": [(ms, t, k, name) for (t, k, name), ms in nodes.most_common()]}


def report(found: dict, bundle, part: str, threads: int, command: str, top: int) -> str:
    from edgevfm.runtime.bundle import open_bundle

    manifest = open_bundle(bundle).manifest
    total = sum(ms for *_, ms, _ in found["by_kind"]) or 1.0
    lines = [f"# OpenVINO profile: {bundle} part {part!r}", "", f"Produced by `{command}`. {made_by(manifest)}", "",
             f"One call: {found['call_ms']:.1f} ms (median); the nodes' own times add up to {total:.1f} ms "
             "(OpenVINO counts each node's time on its own threads).", "",
             "| node type | kernel | ms | share | nodes |", "|---|---|---|---|---|"]
    for node_type, kernel, ms, count in found["by_kind"][:top]:
        lines.append(f"| {node_type} | {kernel} | {ms:.1f} | {ms / total:.1%} | {count} |")
    lines += ["", f"The {top} slowest nodes:", "", "| ms | node type | kernel | node |", "|---|---|---|---|"]
    for ms, node_type, kernel, name in found["nodes"][:top]:
        lines.append(f"| {ms:.1f} | {node_type} | {kernel} | `{name}` |")
    lines += ["", f"{machine_line(manifest, part, threads)}, set as the runtime sets it; seeded random inputs at "
              "the manifest's sizes."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--part", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    found = measure(args.bundle, args.part, args.threads, args.runs)
    return emit(report(found, args.bundle, args.part, args.threads, command_of("profile", argv), args.top), args.output)


if __name__ == "__main__":
    sys.exit(main())
