"""Hostile clients against a live server: a corpus of bad requests (broken, oversized and bomb
images, bodies that are not JSON or do not fit, NaN and huge numbers, unknown models, missing
fields, prompts too long) is answered 100% 4xx with a message, never 5xx, and /health stays 200."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from edgevfm.serve.app import Options
from edgevfm.serve.images import ImageLimits
from serving import LiveServer, data_uri

CAT = skimage.data.chelsea()


def _b64(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def _bomb(side: int) -> str:
    """A 1-bit PNG of side x side pixels: a few kilobytes that would decode to side² bytes."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return _b64(buffer.getvalue())


def _jpeg_truncated() -> str:
    buffer = io.BytesIO()
    Image.fromarray(CAT).save(buffer, format="JPEG")
    return _b64(buffer.getvalue()[: len(buffer.getvalue()) // 2], "jpeg")


def _user(content) -> list[dict]:
    return [{"role": "user", "content": content}]


def _with_image(url: str) -> list[dict]:
    return _user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is it?"}])


def corpus() -> list[tuple[str, str, object]]:
    """(name, path, body): body as JSON-able data, or raw bytes sent as they are."""
    cat = data_uri(CAT)
    chat, emb, sam = "/v1/chat/completions", "/v1/embeddings", "/v1/sam/segment"
    return [
        ("truncated jpeg", chat, {"model": "llava", "messages": _with_image(_jpeg_truncated())}),
        ("bytes that are no image", emb, {"model": "clip", "input": [{"type": "image_url",
                                                                       "image_url": {"url": _b64(b"hello world")}}]}),
        ("more pixels than allowed", "/v1/sam/embed", {"model": "sam", "image": _bomb(3000)}),
        ("a pillow decompression bomb", "/v1/classify", {"model": "clip", "image": _bomb(14000), "labels": ["a"]}),
        ("oversized body", emb, {"model": "clip", "input": "x" * (2 << 20)}),
        ("truncated json", emb, b'{"model": "clip", "input": '),
        ("json array", emb, b"[1, 2]"),
        ("json string", emb, b'"clip"'),
        ("empty body", emb, b""),
        ("not utf-8", emb, b"\xff\xfe\x00{"),
        ("model of the wrong type", emb, {"model": 5, "input": "a cat"}),
        ("missing model", emb, {"input": "a cat"}),
        ("unknown model", emb, {"model": "gpt-9", "input": "a cat"}),
        ("messages as a string", chat, {"model": "llava", "messages": "hi"}),
        ("no messages", chat, {"model": "llava", "messages": []}),
        ("unknown role", chat, {"model": "llava", "messages": [{"role": "robot", "content": "hi"}]}),
        ("negative max_tokens", chat, {"model": "llava", "messages": _user("hi"), "max_tokens": -1}),
        ("max_tokens as text", chat, {"model": "llava", "messages": _user("hi"), "max_tokens": "ten"}),
        ("NaN temperature", chat, b'{"model": "llava", "messages": [{"role": "user", "content": "hi"}], '
                                  b'"temperature": NaN}'),
        ("infinite temperature", chat, b'{"model": "llava", "messages": [{"role": "user", "content": "hi"}], '
                                       b'"temperature": 1e999}'),
        ("top_p of 0", chat, {"model": "llava", "messages": _user("hi"), "top_p": 0, "temperature": 1}),
        ("five stop strings", chat, {"model": "llava", "messages": _user("hi"), "stop": list("abcde")}),
        ("n streamed", chat, {"model": "llava", "messages": _user("hi"), "stream": True, "n": 2}),
        ("an image in an assistant turn", chat, {"model": "llava", "messages": [
            {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": cat}},
                                              {"type": "text", "text": "x"}]}, *_user("hi")]}),
        ("the last turn is the assistant's", chat, {"model": "llava", "messages": [
            *_user("hi"), {"role": "assistant", "content": "hello"}]}),
        ("a prompt longer than the context", chat, {"model": "llava", "messages": _user("cat " * 3000)}),
        ("the same, streamed", chat, {"model": "llava", "stream": True, "messages": _user("cat " * 3000)}),
        ("chat with a CLIP model", chat, {"model": "clip", "messages": _user("hi")}),
        ("no input", emb, {"model": "clip", "input": []}),
        ("an empty string", emb, {"model": "clip", "input": [""]}),
        ("embeddings from SAM", emb, {"model": "sam", "input": "a cat"}),
        ("no labels", "/v1/classify", {"model": "clip", "image": cat, "labels": []}),
        ("no image", "/v1/classify", {"model": "clip", "labels": ["a cat"]}),
        ("a remote image", "/v1/classify", {"model": "clip", "image": "http://127.0.0.1:9/cat.png", "labels": ["a"]}),
        ("a file URL", "/v1/classify", {"model": "clip", "image": "file:///etc/passwd", "labels": ["a"]}),
        ("a data URI that is not base64", "/v1/classify", {"model": "clip", "image": "data:image/png,abc",
                                                             "labels": ["a"]}),
        ("base64 with bad characters", "/v1/classify", {"model": "clip", "image": "data:image/png;base64,@@@",
                                                        "labels": ["a"]}),
        ("captions from CLIP", "/v1/captions", {"model": "clip", "image": cat}),
        ("NaN point", sam, b'{"model": "sam", "image": "' + cat.encode() + b'", "points": [[NaN, 1]], "labels": [1]}'),
        ("a point outside the image", sam, {"model": "sam", "image": cat, "points": [[9000, 9000]], "labels": [1]}),
        ("labels that do not match the points", sam, {"model": "sam", "image": cat, "points": [[10, 10]],
                                                      "labels": [1, 0]}),
        ("a huge box", sam, {"model": "sam", "image": cat, "box": [0, 0, 1e300, 1e300]}),
        ("an unknown image_id", sam, {"model": "sam", "image_id": "img-nope", "points": [[10, 10]]}),
        ("neither image nor image_id", sam, {"model": "sam", "points": [[10, 10]]}),
        ("no prompt", sam, {"model": "sam", "image": cat}),
        ("mask input of the wrong shape", sam, {"model": "sam", "image": cat, "points": [[10, 10]],
                                                "mask_input": [[0.0, 1.0]]}),
        ("too many points per side", "/v1/sam/masks", {"model": "sam", "image": cat, "points_per_side": 1000}),
    ]


@pytest.fixture(scope="module")
def server(clip_bundle, sam_bundle, llava_bundle):
    options = Options(images=ImageLimits(max_pixels=4_000_000), max_body_bytes=1 << 20)
    live = LiveServer({"clip": clip_bundle, "sam": sam_bundle, "llava": llava_bundle}, options)
    yield live
    live.stop()


def test_every_bad_request_is_a_4xx_with_a_message_and_health_stays_200(server):
    cases = corpus()
    assert len(cases) >= 30
    answered = {}
    for name, path, body in cases:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"},
                              timeout=60)
        answered[name] = response.status_code
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
        assert response.json()["error"]["message"], name
        assert httpx.get(server.url + "/health").status_code == 200, f"/health after {name}"
    assert answered["more pixels than allowed"] == answered["a pillow decompression bomb"] == 413
    assert answered["oversized body"] == 413
    assert answered["unknown model"] == 404 and answered["an unknown image_id"] == 404
    assert httpx.get(server.url + "/v1/embeddings").status_code == 405
    # and the server still answers properly
    ok = httpx.post(server.url + "/v1/embeddings", json={"model": "clip", "input": "a cat"}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) > 0
    metrics = httpx.get(server.url + "/metrics").text
    assert not [line for line in metrics.splitlines() if line.startswith("edgevfm_requests_total") and 'status="5' in line]


def test_error_messages_say_what_was_expected(server):
    cat = data_uri(CAT)
    remote = server.post("/v1/classify", {"model": "clip", "image": "http://127.0.0.1:9/x.png", "labels": ["a"]})
    assert "--allow-remote-images" in remote.json()["error"]["message"]
    outside = server.post("/v1/sam/segment", {"model": "sam", "image": cat, "points": [[9000, 9000]], "labels": [1]})
    assert "9000" in outside.json()["error"]["message"]
    long = server.post("/v1/chat/completions", {"model": "llava", "messages": _user("cat " * 3000)})
    assert "context" in long.json()["error"]["message"]
    typed = server.post("/v1/chat/completions", {"model": "llava", "messages": _user("hi"), "max_tokens": "ten"})
    assert typed.json()["error"]["param"] == "max_tokens" and "ChatRequest" in typed.json()["error"]["message"]
    bomb = server.post("/v1/sam/embed", {"model": "sam", "image": _bomb(3000)})
    assert "3000x3000" in bomb.json()["error"]["message"]
