"""edgevfm serve: the official openai client against a real uvicorn server, every endpoint held
equal to the Python API, the queue's 503/504, cancel on disconnect, keys, CORS, loading, SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import skimage.data
from openai import OpenAI

from edgevfm.runtime import load
from edgevfm.runtime.masks import rle_to_mask
from edgevfm.serve.app import Options, create_app
from edgevfm.serve.errors import HttpError
from edgevfm.serve.models import Served
from serving import LiveServer, data_uri

CAT = skimage.data.chelsea()


@pytest.fixture(scope="module")
def server(clip_bundle, sam_bundle, llava_bundle, blip_vqa_bundle, smol_bundle):
    live = LiveServer({"clip": clip_bundle, "sam": sam_bundle, "llava": llava_bundle, "vqa": blip_vqa_bundle,
                       "smol": smol_bundle})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _question(url: str, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


def test_streamed_llava_answer_equals_the_pipeline(server, client, llava_bundle):
    stream = client.chat.completions.create(model="llava", messages=_question(data_uri(CAT)), stream=True,
                                            temperature=0, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    expected = load(llava_bundle).answer(CAT, "What is in the picture?")
    assert len(pieces) > 1
    assert "".join(pieces) == expected
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens >= len(pieces) - 1


def test_whole_completion_counts_tokens_and_cuts_at_max_tokens(client, llava_bundle):
    answer = client.chat.completions.create(model="llava", messages=_question(data_uri(CAT)), max_tokens=5, n=2)
    expected = load(llava_bundle).answer(CAT, "What is in the picture?", max_new_tokens=5)
    assert [c.message.content for c in answer.choices] == [expected, expected]  # greedy: the same twice
    assert [c.finish_reason for c in answer.choices] == ["length", "length"]
    assert answer.usage.completion_tokens == 10


def test_a_second_turn_reuses_the_first_turns_cache_and_answers_as_a_chat(server, client, smol_bundle):
    url = data_uri(CAT)
    first = client.chat.completions.create(model="smol", messages=_question(url, "Describe it."), max_tokens=8)
    history = _question(url, "Describe it.") + [{"role": "assistant", "content": first.choices[0].message.content},
                                                {"role": "user", "content": "And its colour?"}]
    kept = server.app.state.conversations["smol"].kept
    before = {id(session) for _, session in kept.values()}
    second = client.chat.completions.create(model="smol", messages=history, max_tokens=8)
    chat = load(smol_bundle).chat(CAT, max_new_tokens=8)
    assert chat.send("Describe it.") == first.choices[0].message.content
    assert chat.send("And its colour?") == second.choices[0].message.content
    reused = [s for _, s in kept.values() if id(s) in before]
    assert reused and reused[-1].prefilled < len(reused[-1].ids) // 2  # only the new turn was prefilled


def test_embeddings_equal_the_pipeline_as_floats_and_base64(server, client, clip_bundle):
    pipeline = load(clip_bundle)
    texts = client.embeddings.create(model="clip", input=["a cat", "a rocket"])  # the client asks for base64
    got = np.array([d.embedding for d in texts.data])
    np.testing.assert_allclose(got, pipeline.embed_texts(["a cat", "a rocket"]), atol=1e-6)
    body = {"model": "clip", "encoding_format": "float",
            "input": ["a cat", {"type": "image_url", "image_url": {"url": data_uri(CAT)}}]}
    data = server.post("/v1/embeddings", body).json()["data"]
    np.testing.assert_allclose(data[0]["embedding"], pipeline.embed_texts(["a cat"])[0], atol=1e-6)
    np.testing.assert_allclose(data[1]["embedding"], pipeline.embed_images([CAT])[0], atol=1e-6)


def test_classify_and_vqa_answer_as_the_pipelines(server, clip_bundle, blip_vqa_bundle):
    labels = ["a cat", "a dog", "a rocket"]
    found = server.post("/v1/classify", {"model": "clip", "image": data_uri(CAT), "labels": labels}).json()
    expected = load(clip_bundle).classify(CAT, labels)
    assert [x["label"] for x in found["labels"]] == [label for label, _ in expected]
    np.testing.assert_allclose([x["probability"] for x in found["labels"]], [p for _, p in expected], atol=1e-6)
    answer = server.post("/v1/chat/completions", {"model": "vqa", "messages": _question(data_uri(CAT), "what?")})
    assert answer.json()["choices"][0]["message"]["content"] == load(blip_vqa_bundle).answer(CAT, "what?")


def test_sam_segment_by_image_id_equals_predict(server, sam_bundle):
    embedded = server.post("/v1/sam/embed", {"model": "sam", "image": data_uri(CAT)}).json()
    assert (embedded["width"], embedded["height"], embedded["cached"]) == (451, 300, False)
    prompt = {"points": [[220, 150], [100, 60]], "labels": [1, 0], "box": [80, 20, 330, 290]}
    found = server.post("/v1/sam/segment", {"model": "sam", "image_id": embedded["image_id"], **prompt}).json()
    predictor = load(sam_bundle)
    predictor.set_image(CAT)
    expected = predictor.predict(**prompt)
    masks = np.stack([rle_to_mask(m["mask"]) for m in found["masks"]])
    assert masks.shape == expected.masks.shape and (masks == expected.masks).all()
    np.testing.assert_allclose([m["score"] for m in found["masks"]], expected.scores, atol=1e-6)
    again = server.post("/v1/sam/embed", {"model": "sam", "image": data_uri(CAT)}).json()
    assert again["cached"] and again["image_id"] == embedded["image_id"]
    png = server.post("/v1/sam/segment", {"model": "sam", "image": data_uri(CAT), "format": "png", **prompt}).json()
    first = np.array(__import__("PIL.Image").Image.open(__import__("io").BytesIO(
        base64.b64decode(png["masks"][0]["mask"].split(",", 1)[1])))) > 0
    assert (first == expected.masks[0]).all()


def test_sam_automatic_masks_as_rle(server, sam_bundle):
    options = {"points_per_side": 4, "pred_iou_thresh": -1e6, "stability_score_thresh": 0}
    found = server.post("/v1/sam/masks", {"model": "sam", "image": data_uri(CAT), **options}).json()["masks"]
    expected = load(sam_bundle).generate(CAT, **options)
    assert len(found) == len(expected) > 0
    assert all((rle_to_mask(f["mask"]) == e["segmentation"]).all() for f, e in zip(found, expected))


def test_a_full_queue_answers_503_with_retry_after(server):
    served = server.app.state.served["smol"]
    taken = [asyncio.run_coroutine_threadsafe(served.admit(), server.loop)  # 1 runs, the rest wait
             for _ in range(served.workers + served.queue_size)]
    taken[0].result(10)
    try:
        response = server.post("/v1/chat/completions", {"model": "smol", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "is busy" in response.json()["error"]["message"]
    finally:
        for waiting in taken:
            waiting.result(10)
            server.loop.call_soon_threadsafe(served.release)
    assert server.post("/v1/chat/completions", {"model": "smol", "max_tokens": 2,
                                                "messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def test_a_client_that_disconnects_stops_its_generation(server):
    """SmolLM2 makes 300 tokens in many seconds here; the stream is dropped after three pieces."""
    body = {"model": "smol", "stream": True, "max_tokens": 300, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a cat."}]}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            seen = [line for line, _ in zip((x for x in lines if x.startswith("data: ")), range(3))]
            assert len(seen) == 3
            assert server.metric("edgevfm_in_flight", "smol") == 1
    stopped_at = time.monotonic()
    while server.metric("edgevfm_in_flight", "smol") != 0:
        assert time.monotonic() - stopped_at < 1.0, "the generation went on after its client left"
        time.sleep(0.05)
    served = server.app.state.served["smol"]
    assert served.running == 0 and served.pending == 0


def test_a_request_over_its_time_is_a_504_and_its_work_stops(smol_bundle):
    live = LiveServer({"smol": smol_bundle}, timeout=0.5)
    try:
        started = time.monotonic()
        response = live.post("/v1/chat/completions", {"model": "smol", "max_tokens": 300, "temperature": 0,
                                                      "messages": [{"role": "user", "content": "Tell a long story."}]})
        assert response.status_code == 504 and time.monotonic() - started < 5
        assert "did not answer within 0.5 s" in response.json()["error"]["message"]
        end = time.monotonic() + 2
        while live.metric("edgevfm_in_flight", "smol") != 0:
            assert time.monotonic() < end, "the timed-out generation went on"
            time.sleep(0.05)
    finally:
        live.stop()


def test_api_keys_and_cors(clip_bundle):
    live = LiveServer({"clip": clip_bundle}, Options(api_keys=frozenset({"k1"}), cors_origins=("http://app.test",)))
    try:
        body = {"model": "clip", "input": "a cat"}
        assert live.post("/v1/embeddings", body).status_code == 401
        assert live.post("/v1/embeddings", body, headers={"Authorization": "Bearer k2"}).status_code == 401
        assert live.post("/v1/embeddings", body, headers={"Authorization": "Bearer k1"}).status_code == 200
        assert httpx.get(live.url + "/health").status_code == 200
        preflight = httpx.options(live.url + "/v1/embeddings", headers={
            "Origin": "http://app.test", "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "http://app.test"
    finally:
        live.stop()
    plain = LiveServer({"clip": clip_bundle})
    try:
        response = plain.post("/v1/embeddings", {"model": "clip", "input": "a cat"}, headers={"Origin": "http://x.test"})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    finally:
        plain.stop()


def test_health_is_503_until_the_bundles_have_loaded(clip_bundle, tmp_path):
    from starlette.testclient import TestClient

    served = Served("clip", clip_bundle)
    with TestClient(create_app([served], load=False)) as http:
        assert http.get("/health").status_code == 503 and http.get("/health").json()["status"] == "loading"
        response = http.post("/v1/embeddings", json={"model": "clip", "input": "a cat"})
        assert response.status_code == 503 and "still loading" in response.json()["error"]["message"]
        served.load()
        assert http.get("/health").json() == {"status": "ok"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    bad = Served("bad", broken)
    bad.load()
    with TestClient(create_app([bad], load=False)) as http:
        assert http.get("/health").status_code == 503 and "bad" in http.get("/health").json()["failed"]


def test_queue_admission_unit():
    """One worker, one place in the queue: a third request is a 503; both time out (504), the slow
    one's thread holds its place until it really stops, the queued one never runs."""
    async def scenario():
        served = Served("m", ".", workers=1, queue_size=1, timeout=0.3)
        go, ran = threading.Event(), []
        slow = asyncio.ensure_future(served.call(lambda work: go.wait(10) and "slow"))
        queued = asyncio.ensure_future(served.call(lambda work: ran.append("queued")))
        await asyncio.sleep(0.05)
        assert served.pending == 2 and served.running == 1
        with pytest.raises(HttpError) as full:
            await served.admit()
        assert full.value.status == 503 and full.value.headers == {"Retry-After": "1"}
        with pytest.raises(HttpError) as late:
            await queued
        assert late.value.status == 504 and "did not answer within 0.3 s" in late.value.message
        with pytest.raises(HttpError) as slow_late:
            await slow
        assert slow_late.value.status == 504 and served.running == 1 and served.pending == 2
        go.set()
        await asyncio.sleep(0.1)
        assert ran == [] and served.pending == 0 and served.running == 0
        served.close()

    asyncio.run(scenario())


def test_requests_waiting_together_run_as_one_batch_and_fail_alone():
    """While the worker is busy, three requests of a kind wait; the worker runs them in one call,
    each gets its own outcome, and the one whose item fails gets its error (a runtime error: 400)."""
    from edgevfm.runtime.errors import InputError

    async def scenario():
        served = Served("m", ".", workers=1, queue_size=8, timeout=5)
        go, calls = threading.Event(), []
        busy = asyncio.ensure_future(served.call(lambda work: go.wait(10)))

        def run_many(items):
            calls.append(list(items))
            return [InputError(f"bad item {x}") if x < 0 else x * 10 for x in items]

        waiting = [asyncio.ensure_future(served.batched("k", x, run_many, limit=8)) for x in (1, -2, 3)]
        await asyncio.sleep(0.05)
        go.set()
        await busy
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert calls == [[1, -2, 3]]
        assert outcomes[0] == 10 and outcomes[2] == 30
        assert isinstance(outcomes[1], HttpError) and outcomes[1].status == 400 and "bad item -2" in outcomes[1].message
        alone = await served.batched("k", 4, run_many, limit=8)  # nothing else waiting: a batch of one
        assert alone == 40 and calls[-1] == [4]
        await asyncio.sleep(0.05)
        assert served.pending == 0
        served.close()

    asyncio.run(scenario())


def test_concurrent_embeddings_requests_equal_the_pipeline_and_a_bad_image_fails_alone(server, clip_bundle):
    pipeline, images = load(clip_bundle), [CAT, CAT[::-1], CAT[:, ::-1], CAT[100:300, 50:250]]
    bodies = [{"model": "clip", "input": [{"type": "image_url", "image_url": {"url": data_uri(im)}}, "a cat"]}
              for im in images]
    bodies.insert(2, {"model": "clip", "input": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}]})
    answers = [None] * len(bodies)

    def ask(k):
        answers[k] = server.post("/v1/embeddings", bodies[k])

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers[2].status_code == 400 and "not an image" in answers[2].json()["error"]["message"]
    good = [a for k, a in enumerate(answers) if k != 2]
    assert [a.status_code for a in good] == [200] * 4
    text = pipeline.embed_texts(["a cat"])[0]
    for image, answer in zip(images, good):
        got = [np.asarray(d["embedding"]) for d in answer.json()["data"]]
        np.testing.assert_allclose(got[0], pipeline.embed_images([image])[0], atol=1e-6)
        np.testing.assert_allclose(got[1], text, atol=1e-6)


def _serve_command(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgevfm.runtime.cli", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(url: str, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def test_sigterm_drains_the_request_in_flight_and_a_taken_port_is_named(smol_bundle):
    from edgevfm.serve.server import bind

    probe = bind("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    process = _serve_command(f"smol={smol_bundle}", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url)
        second = _serve_command(f"smol={smol_bundle}", "--port", str(port))
        out, err = second.communicate(timeout=60)
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err
        result = {}

        def ask():
            result["response"] = httpx.post(url + "/v1/chat/completions", timeout=60, json={
                "model": "smol", "max_tokens": 80, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]})
            result["answered"] = time.monotonic()

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        asker.join(60)
        assert result["answered"] > signalled, "the request was not in flight when the signal came"
        assert result["response"].status_code == 200
        assert result["response"].json()["usage"]["completion_tokens"] > 0
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)


def test_remote_images_are_fetched_only_when_allowed_and_within_the_byte_limit(clip_bundle):
    """--allow-remote-images against a plain HTTP server on this machine (no network needed): a
    PNG it serves is answered as the same image sent inline; one over the byte limit is a 413; a
    URL that answers 404 is a 400 saying it cannot be fetched."""
    import http.server
    import io

    from PIL import Image

    from edgevfm.serve.images import ImageLimits

    buffer = io.BytesIO()
    Image.fromarray(CAT).save(buffer, format="PNG")
    png = buffer.getvalue()
    files = {"/cat.png": png, "/big.png": png + b"\0" * 4096}

    class Files(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{origin.server_address[1]}"
    live = LiveServer({"clip": clip_bundle}, Options(images=ImageLimits(allow_remote=True, max_bytes=len(png) + 1024)))
    try:
        pipeline, labels = load(clip_bundle), ["a cat", "a dog", "a rocket"]
        found = live.post("/v1/classify", {"model": "clip", "image": base + "/cat.png", "labels": labels})
        assert found.status_code == 200
        expected = pipeline.classify(CAT, labels)
        assert [x["label"] for x in found.json()["labels"]] == [label for label, _ in expected]
        np.testing.assert_allclose([x["probability"] for x in found.json()["labels"]], [p for _, p in expected],
                                   atol=1e-6)
        vector = live.post("/v1/embeddings", {"model": "clip", "encoding_format": "float", "input": [
            {"type": "image_url", "image_url": {"url": base + "/cat.png"}}]}).json()["data"][0]["embedding"]
        np.testing.assert_allclose(vector, pipeline.embed_images([CAT])[0], atol=1e-6)
        big = live.post("/v1/classify", {"model": "clip", "image": base + "/big.png", "labels": labels})
        assert big.status_code == 413 and f"over {len(png) + 1024} bytes" in big.json()["error"]["message"]
        missing = live.post("/v1/classify", {"model": "clip", "image": base + "/gone.png", "labels": labels})
        assert missing.status_code == 400 and "cannot be fetched" in missing.json()["error"]["message"]
    finally:
        live.stop()
        origin.shutdown()


def test_the_server_process_runs_numpy_blas_on_one_thread():
    """The server limits numpy's BLAS to one thread (its threads spun beside ONNX Runtime's); checked
    in a fresh process whose BLAS starts with two threads, as OpenBLAS does on a multi-core machine."""
    code = ("import numpy\nfrom threadpoolctl import threadpool_info, threadpool_limits\n"
            "threadpool_limits(2, user_api='blas')\n"
            "before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "from edgevfm.serve.server import one_blas_thread\none_blas_thread()\n"
            "after = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "import json\nprint(json.dumps([before, after]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert before and set(before) == {2} and set(after) == {1}
