"""``python -m edgevfm.benchmarks.serve``: the server under load, against the same work through the
Python API in the same run.

The bundles are exported here, served by ``edgevfm serve`` in its own process, and N client threads
send requests for T seconds per endpoint family (a closed loop: each client sends its next request
when the last is answered). Then N threads call the Python API for T seconds on the same inputs,
twice: with ``load()``'s defaults, and with the server's own settings (``spin_wait=False``: ONNX
Runtime's threads sleep between operators instead of spinning; numpy's BLAS at one thread).

    python -m edgevfm.benchmarks.serve -o benchmarks/reports/serve --clients 8 --seconds 60

Rows: ``embeddings`` (tiny CLIP, one image each; and CLIP ViT-B/32 at its real size), ``chat`` (LLaVA, 16 greedy tokens), ``sam segment
(image_id)`` (a point on an embedded image) and ``sam segment (first)`` (a point on an image the
server has not seen: encoder and decoder). Columns: requests/s, latency percentiles, the status
counts (a deliberate 503/504 is counted apart from a 5xx), and requests/s of the Python API with
each setting. The goal's ratio is against the API as ``load()`` makes it; the other is reported
beside it, with the HTTP path's own rate (``GET /v1/models``: no body, no model).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .tool import write_report

# tiny bundles, where HTTP's fixed cost weighs most; CLIP ViT-B/32 at its real size for comparison
MODELS = {"clip": "random:clip-tiny", "clip-b32": "random:clip-vit-b32", "llava": "random:llava-tiny",
          "sam": "trained:sam-shapes"}
CHAT_TOKENS = 16


class Client:
    """A plain keep-alive HTTP client, one connection per thread: the load generator shares the
    server's cores, so it should cost as little as it can (as wrk or hey would)."""

    def __init__(self, port: int):
        self.port, self.local = port, threading.local()

    def post_raw(self, path: str, body: bytes | None, method: str = "POST") -> int:
        import http.client

        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
            response = connection.getresponse()
            response.read()
            return response.status
        except Exception:
            self.local.connection = None
            raise

    def post(self, path: str, data: dict) -> tuple[int, bytes]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        connection.request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()


def _data_uri(image: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png(uri: str) -> bytes:
    import base64

    return base64.b64decode(uri.split(",", 1)[1])


def _tagged(png: bytes, n: int) -> bytes:
    """``png`` with a text chunk holding ``n`` before its IEND: new bytes, so a new ``image_id`` the
    server has never embedded, and the same pixels, so the same work. Every "first" segment sends
    one, made as it is sent (a few microseconds): no row runs out of new images."""
    import zlib

    data = b"tEXt" + b"edgevfm\x00" + str(n).encode()
    chunk = len(data[4:]).to_bytes(4, "big") + data + zlib.crc32(data).to_bytes(4, "big")
    return png[:-12] + chunk + png[-12:]  # IEND is the last 12 bytes of a PNG


def _decoded(png: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


def _images(count: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Distinct pictures (a photo with a varied patch): the 64 inputs of each row."""
    import skimage.data

    from PIL import Image

    base = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((size, size)))
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        image = base.copy()
        image[:8, :8] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        found.append(image)
    return found


class Load:
    """N closed-loop clients for T seconds: each calls ``send(client, i)`` -> status code."""

    def __init__(self, clients: int, seconds: float):
        self.clients, self.seconds = clients, seconds

    def run(self, send) -> dict:
        latencies, statuses, lock = [], {}, threading.Lock()
        end = time.monotonic() + self.seconds

        def client(k: int):
            i = 0
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    status = send(k, i)
                except StopIteration:  # the row's distinct inputs are used up: this client is done
                    break
                except Exception as exc:  # a transport failure counts as what it is
                    status = type(exc).__name__
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                i += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        ms = np.asarray(latencies) * 1000
        ok = sum(v for k, v in statuses.items() if k.startswith("2"))
        return {"requests": len(latencies), "ok": ok, "per_second": round(ok / wall, 2), "wall_s": round(wall, 1),
                "p50_ms": round(float(np.percentile(ms, 50)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1), "statuses": statuses}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(bundles: dict[str, Path], port: int, workers: int, threads: int | None = None) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "edgevfm.runtime.cli", "serve", *[f"{n}={p}" for n, p in bundles.items()],
               "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    command += ["--threads", str(threads)] if threads else []
    process = subprocess.Popen(command)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"edgevfm serve exited with {process.returncode}")
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("edgevfm serve did not become healthy in 300 s")


def run(work: Path, clients: int, seconds: float, workers: int, threads: int | None) -> dict:
    from edgevfm.export.api import export

    from .machine import machine_info

    bundles = {name: export(model, work / name, force=True) for name, model in MODELS.items()}
    images = _images(64)
    uris = [_data_uri(im) for im in images]
    pngs = [_png(uri) for uri in uris]
    first_lock = threading.Lock()

    question = "What is in the picture?"
    port = _free_port()
    process = serve(bundles, port, workers, threads)
    load_ = Load(clients, seconds)
    rows = {}
    try:
        client = Client(port)
        embedded = json.loads(client.post("/v1/sam/embed", {"model": "sam", "image": uris[0]})[1])["image_id"]
        # request bodies are made before the clock starts (the load generator's cost is not the
        # server's), but for first segments: a new image each, made by _tagged as it is sent
        bodies = {
            "embeddings": [json.dumps({"model": "clip", "input": [{"type": "image_url", "image_url": {"url": u}}]})
                           .encode() for u in uris],
            "embeddings (ViT-B/32)": [json.dumps({"model": "clip-b32", "input": [
                {"type": "image_url", "image_url": {"url": u}}]}).encode() for u in uris],
            "chat": [json.dumps({"model": "llava", "max_tokens": CHAT_TOKENS, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": u}}, {"type": "text", "text": question}]}]}).encode()
                for u in uris],
            "sam segment (image_id)": [json.dumps({"model": "sam", "image_id": embedded, "points": [[40 + i, 60]],
                                                   "labels": [1]}).encode() for i in range(64)],
        }
        paths = {"embeddings": "/v1/embeddings", "embeddings (ViT-B/32)": "/v1/embeddings", "chat": "/v1/chat/completions",
                 "sam segment (image_id)": "/v1/sam/segment", "sam segment (first)": "/v1/sam/segment"}
        taken = itertools.count()
        for name, path in paths.items():
            print(f"server: {name} ({clients} clients, {seconds:g} s)", flush=True)
            if name == "sam segment (first)":
                def send(k, i, path=path):
                    with first_lock:
                        n = next(taken)
                    body = b'{"model": "sam", "image": "data:image/png;base64,%s", "points": [[%d, 60]], "labels": [1]}'
                    return client.post_raw(path, body % (base64.b64encode(_tagged(pngs[n % len(pngs)], n)), 40 + n % 150))
            else:
                def send(k, i, path=path, choices=bodies[name]):
                    return client.post_raw(path, choices[(k + i) % len(choices)])
            rows[name] = {"server": load_.run(send)}
            if name.startswith("sam segment"):  # and as one user clicking alone: latency without a queue
                print(f"server: {name} (1 client, {min(seconds, 10):g} s)", flush=True)
                rows[name]["alone"] = Load(1, min(seconds, 10)).run(send)
        # the HTTP path alone (no model work, no body): what any request costs the server at least
        print(f"server: GET /v1/models ({clients} clients, {min(seconds, 10):g} s)", flush=True)
        floor = Load(clients, min(seconds, 10)).run(lambda k, i: client.post_raw("/v1/models", None, "GET"))
    finally:
        process.terminate()
        process.wait(60)

    # the API decodes the same PNG bytes the server gets: the same work
    # the API as load() makes it (the goal's measure), and with the settings the server runs with
    from threadpoolctl import threadpool_limits

    for setting, options, blas in (("api", {"threads": threads}, None),
                                   ("api_server_settings", {"threads": threads, "spin_wait": False}, 1)):
        with threadpool_limits(blas, user_api="blas"):
            for name, call in api_calls(bundles, images, pngs, options).items():
                print(f"python API ({'defaults' if blas is None else 'the server settings'}): {name} ({clients} "
                      f"threads, {seconds:g} s)", flush=True)
                rows[name][setting] = load_.run(call)
    for row in rows.values():  # the goal's ratio (the API as load() makes it), and against the tuned API
        row["ratio"] = round(row["server"]["per_second"] / max(row["api"]["per_second"], 1e-9), 2)
        row["ratio_server_settings"] = round(row["server"]["per_second"]
                                             / max(row["api_server_settings"]["per_second"], 1e-9), 2)
    cached, first = rows["sam segment (image_id)"]["server"], rows["sam segment (first)"]["server"]
    return {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(threads),
            "models": MODELS, "clients": clients, "seconds": seconds, "workers": workers,
            "threads": threads, "rows": rows, "http_floor": floor,
            "segment_speedup": round(first["p50_ms"] / max(cached["p50_ms"], 1e-9), 1),
            "segment_speedup_alone": round(rows["sam segment (first)"]["alone"]["p50_ms"]
                                           / max(rows["sam segment (image_id)"]["alone"]["p50_ms"], 1e-9), 1)}


def api_calls(bundles: dict, images: list, pngs: list, options: dict) -> dict:
    """Each row's work through the Python API (``load(bundle, **options)``), as ``send(k, i)``
    callables for :class:`Load`. The API keeps no embeddings: a first segment is every image's."""
    from edgevfm.runtime import load

    clip, b32, llava, sam = (load(bundles[n], **options)
                             for n in ("clip", "clip-b32", "llava", "sam"))
    embedding = sam.embed(images[0])
    question = "What is in the picture?"
    return {
        "embeddings": lambda k, i: clip.embed_images([_decoded(pngs[(k + i) % 64])]) is not None and 200,
        "embeddings (ViT-B/32)": lambda k, i: b32.embed_images([_decoded(pngs[(k + i) % 64])]) is not None and 200,
        "chat": lambda k, i: llava.answer(_decoded(pngs[(k + i) % 64]), question, max_new_tokens=CHAT_TOKENS)
        is not None and 200,
        "sam segment (image_id)": lambda k, i: sam.predict(points=[[40 + i % 150, 60]], labels=[1],
                                                           image=embedding) is not None and 200,
        "sam segment (first)": lambda k, i: sam.predict(points=[[40 + i % 150, 60]], labels=[1],
                                                        image=sam.embed(_decoded(pngs[(k + i) % 64])))
        is not None and 200,
    }


def serve_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("starlette", "uvicorn", "pydantic", "prometheus_client"))


def demo(clip: Path, sam: Path, threads: int) -> None:
    """The demo's line: ``edgevfm serve`` with the scene-trained CLIP and SAM, asked over HTTP as a
    client would: zero-shot classify a held-out scene, then embed it and segment its first shape
    by ``image_id`` (the mask's IoU with the drawn shape)."""
    from .scenes import HELD_OUT_SEED, SHAPES, scene

    shown, port = scene(HELD_OUT_SEED, 2), _free_port()
    print(f"== edgevfm serve clip-shapes={clip} sam-shapes={sam} --port {port}, asked over HTTP "
          f"(scene: {shown.captions[0]})")
    process = serve({"clip-shapes": clip, "sam-shapes": sam}, port, workers=1, threads=threads)
    try:
        client, uri = Client(port), _data_uri(shown.image)
        _, body = client.post("/v1/classify", {"model": "clip-shapes", "image": uri,
                                               "labels": [f"a photo of a {s}" for s in SHAPES]})
        best = json.loads(body)["labels"][0]
        print(f"      POST /v1/classify -> {best['label']!r} ({best['probability']:.2f}); the largest shape is a "
              f"{shown.label}")
        image_id = json.loads(client.post("/v1/sam/embed", {"model": "sam-shapes", "image": uri})[1])["image_id"]
        ys, xs = np.nonzero(shown.masks[0])
        inside = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # the shape's pixel nearest its centre
        point = [float(xs[inside]), float(ys[inside])]
        masks = json.loads(client.post("/v1/sam/segment", {"model": "sam-shapes", "image_id": image_id,
                                                           "points": [point], "labels": [1]})[1])["masks"]
        from edgevfm.runtime.families.sam_text import mask_iou
        from edgevfm.runtime.masks import rle_to_mask

        chosen = max(masks, key=lambda m: m["score"])
        print(f"      POST /v1/sam/embed, then /v1/sam/segment by image_id at {point}: IoU with the drawn "
              f"{shown.objects[0].name} {mask_iou(rle_to_mask(chosen['mask']), shown.masks[0]):.3f}")
    finally:
        process.terminate()
        process.wait(60)


def report(results: dict, command: str) -> str:
    m = results["machine"]
    lines = [f"# edgevfm serve under load ({results['clients']} clients, {results['seconds']:g} s per row)", "",
             f"Made by `{command}` on {results['created']}: {m['cpu']}, {m['usable_cores']} cores, ISA "
             f"`{m['isa']}`; server `--workers {results['workers']}`"
             + (f" `--threads {results['threads']}`" if results["threads"] else "") + ". Models: "
             + ", ".join(f"{k} = `{v}`" for k, v in results["models"].items()) + ".", "",
             "| endpoint | server req/s | p50 ms | p90 ms | p99 ms | statuses | Python API req/s (defaults) | "
             "server / API (defaults) | Python API req/s (the server's settings) | server / API (the server's "
             "settings) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in results["rows"].items():
        s, a, quiet = row["server"], row["api"], row["api_server_settings"]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items()))
        lines.append(f"| {name} | {s['per_second']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {statuses} | "
                     f"{a['per_second']} | {row['ratio']} | {quiet['per_second']} | {row['ratio_server_settings']} |")
    bad = {name: {k: v for k, v in row["server"]["statuses"].items() if not k.startswith("2")}
           for name, row in results["rows"].items()}
    bad = {k: v for k, v in bad.items() if v}
    worst = min(row["ratio"] for row in results["rows"].values())
    tuned = {name: row["ratio_server_settings"] for name, row in results["rows"].items()}
    floor = results["http_floor"]
    alone = {name: row["alone"]["p50_ms"] for name, row in results["rows"].items() if "alone" in row}
    lines += ["", f"- Non-2xx answers: {bad or 'none'} (a 503 or 504 is the queue's deliberate answer; a 5xx would "
              "be a fault).",
              f"- Throughput against the Python API at the same concurrency, as `load()` makes it: {worst} at worst "
              f"({'meets' if worst >= 0.9 else 'misses'} the 0.9 goal).",
              "- Against the Python API given the server's own settings (`spin_wait=False`, numpy's BLAS at one "
              "thread), which a caller of the API would have to know to set: "
              + ", ".join(f"{name} {ratio}" for name, ratio in tuned.items()) + ". The HTTP path alone, `GET "
              f"/v1/models` (no body, no model), answers {floor['per_second']} req/s here (p50 {floor['p50_ms']} "
              "ms). Where a row's model work is a millisecond or two a request, what the server adds to each (the "
              "JSON body and answer, pydantic, the hop to the model's worker and back) is of the same order, and an "
              "API called in process pays none of it.",
              f"- A segment by `image_id` (the embedding cached) against a first segment with its image, p50 under "
              f"{results['clients']} clients: {results['segment_speedup']}x faster "
              f"({'meets' if results['segment_speedup'] >= 5 else 'misses'} the 5x goal); one client alone (a user "
              f"clicking, no queue): {alone['sam segment (image_id)']} ms against {alone['sam segment (first)']} ms, "
              f"{results['segment_speedup_alone']}x. (Under a saturating closed loop a p50 is about the clients over "
              "the throughput: the first figure is near the ratio of the two rows' throughputs.)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevfm.benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for report.md and load.json")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="per row, for the server and the API each")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers (default 2, as the server's)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads per model (server and API)")
    args = parser.parse_args(argv)
    work = args.output / "bundles"
    try:
        results = run(work, args.clients, args.seconds, args.workers, args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m edgevfm.benchmarks.serve " + " ".join(argv if argv is not None else sys.argv[1:])
    return write_report(args.output, "load.json", results, report(results, command))


if __name__ == "__main__":
    sys.exit(main())
