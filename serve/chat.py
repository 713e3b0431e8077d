"""``POST /v1/chat/completions``: LLaVA's conversations (streamed token by token, multi-turn, the
KV cache of an earlier turn reused where the new request's history starts with it), and BLIP-2's
and BLIP VQA's single answers (the last user message's text about the conversation's last image).

A streamed answer is produced in a worker thread and handed to the response piece by piece; when
the client goes away or the request's time is up, the thread is told to stop before the next token
and the conversation's cache is dropped."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Iterator

from edgevfm.runtime.generate import Session, shared_prefix

from .errors import HttpError, as_http
from .images import ImageLimits, decode_image, image_url
from .models import Served, Work
from .requests import ChatRequest, Message, generation_options

SESSIONS_PER_MODEL = 4  # conversations whose KV cache is kept for a next turn


class Conversations:
    """The KV caches of a model's recent conversations, keyed by the images they are about: a
    request takes the one sharing the longest prefix with its prompt (no other request can use it
    meanwhile) and gives it back when its answer is complete."""

    def __init__(self, size: int = SESSIONS_PER_MODEL):
        self.size, self.kept = size, OrderedDict()  # id -> (image key, Session)
        self.lock = threading.Lock()  # the model's worker threads share it

    def take(self, key: str, ids: list[int]) -> Session:
        with self.lock:
            best, best_shared = None, 0
            for name, (image_key, session) in self.kept.items():
                shared = shared_prefix(session.ids, ids) if image_key == key else 0
                if shared > best_shared:
                    best, best_shared = name, shared
            return self.kept.pop(best)[1] if best is not None else Session()

    def give_back(self, key: str, session: Session) -> None:
        with self.lock:
            self.kept[uuid.uuid4().hex] = (key, session)
            while len(self.kept) > self.size:
                self.kept.popitem(last=False)


def _parts(message: Message, limits: ImageLimits, where: str) -> tuple[list[dict], list, list[str]]:
    """A message's content as template parts, its images decoded, and their URLs."""
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}], [], []
    parts, images, urls = [], [], []
    for i, part in enumerate(message.content):
        param = f"{where}.content.{i}"
        if part.type == "text":
            if not isinstance(part.text, str):
                raise HttpError(400, f"{param}: a text part needs a string 'text'", param)
            parts.append({"type": "text", "text": part.text})
        else:
            urls.append(image_url(part.image_url, param + ".image_url"))
            images.append(decode_image(part.image_url, limits, param + ".image_url"))
            parts.append({"type": "image"})
    return parts, images, urls


def conversation(body: ChatRequest, limits: ImageLimits) -> tuple[list[dict], list, str]:
    """The request's messages as chat templates take them, every image in order, and a key of the
    images (their URLs' digest) that a reused KV cache must match."""
    messages, images, digest = [], [], hashlib.sha256()
    for i, message in enumerate(body.messages):
        parts, found, urls = _parts(message, limits, f"messages.{i}")
        if message.role != "user" and found:
            raise HttpError(400, f"messages.{i}: only user messages may hold images", f"messages.{i}")
        if not any(p["type"] == "text" and p["text"].strip() for p in parts):
            raise HttpError(400, f"messages.{i}: a message needs some text", f"messages.{i}")
        messages.append({"role": message.role, "content": parts})
        images += found
        for url in urls:
            digest.update(hashlib.sha256(url.encode()).digest())
    if messages[-1]["role"] != "user":
        raise HttpError(400, "the last message must be the user's: it is what the model answers", "messages")
    return messages, images, digest.hexdigest()


def llava_stream(served: Served, conversations: Conversations, body: ChatRequest, limits: ImageLimits,
                 work: Work, usage: dict) -> Iterator[str]:
    """LLaVA's answer in pieces; ``usage`` gets the token counts and finish reason at the end."""
    pipeline = served.pipeline
    messages, images, key = conversation(body, limits)
    config = pipeline.generation.with_options(**generation_options(body))
    features = pipeline.image_features(images) if images else None
    prompt = pipeline.prompt(messages, features)
    session = conversations.take(key, prompt.ids)
    usage["prompt_tokens"] = len(prompt.ids)
    pieces = pipeline.stream(prompt, config, session)
    try:
        for piece in pieces:
            if work.stopped:
                usage["finish_reason"] = "cancelled"
                return
            yield piece
    finally:
        pieces.close() if hasattr(pieces, "close") else None
    usage["finish_reason"] = session.finish_reason or "stop"
    usage["completion_tokens"] = session.generated
    conversations.give_back(key, session)  # a stopped answer's cache is dropped, never reused


def single_answer(served: Served, body: ChatRequest, limits: ImageLimits, usage: dict) -> Iterator[str]:
    """BLIP-2's or BLIP VQA's answer: the last user message's text, about the last image given."""
    messages, images, _ = conversation(body, limits)
    if not images:
        raise HttpError(400, f"model {served.name!r} ({served.family}) answers a question about an image: put an "
                        "image_url part in a user message", "messages")
    question = " ".join(p["text"] for p in messages[-1]["content"] if p["type"] == "text").strip()
    answer = served.pipeline.answer(images[-1], question, **generation_options(body))
    usage.update(prompt_tokens=0, completion_tokens=0, finish_reason="stop")
    tokenizer = getattr(served.pipeline, "tokenizer", None)
    if tokenizer is not None:
        usage["completion_tokens"] = len(tokenizer.encode(answer, add_special_tokens=False).ids)
    yield answer


def pieces_of(served: Served, conversations: Conversations, body: ChatRequest, limits: ImageLimits, work: Work,
              usage: dict) -> Iterator[str]:
    if "chat" in served.can:
        return llava_stream(served, conversations, body, limits, work, usage)
    return single_answer(served, body, limits, usage)


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def _usage(usage: dict) -> dict:
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def complete(served: Served, conversations: Conversations, body: ChatRequest, limits: ImageLimits) -> dict:
    """A whole (non-streamed) completion with ``n`` choices."""
    if body.n > 1 and "chat" not in served.can:
        raise HttpError(400, f"n > 1 is for LLaVA models; {served.name!r} gives one answer", "n")

    def job(work: Work):
        choices, usage_total = [], {"prompt_tokens": 0, "completion_tokens": 0}
        for i in range(body.n):
            request = body if body.seed is None or i == 0 else body.model_copy(update={"seed": body.seed + i})
            usage: dict[str, Any] = {}
            text = as_http(lambda: "".join(pieces_of(served, conversations, request, limits, work, usage)))
            if work.stopped:
                break
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": usage.get("finish_reason", "stop"), "logprobs": None})
            usage_total["prompt_tokens"] = usage.get("prompt_tokens", 0)
            usage_total["completion_tokens"] += usage.get("completion_tokens", 0)
        return choices, usage_total

    choices, usage = await served.call(job)
    return {"id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": served.name,
            "choices": choices, "usage": _usage(usage)}


async def stream(served: Served, conversations: Conversations, body: ChatRequest, limits: ImageLimits,
                 include_usage: bool):
    """The SSE events of a streamed completion, OpenAI's ``chat.completion.chunk`` objects ending in
    ``data: [DONE]``. Bad input is found before the first event and raised as an HttpError (the
    response then is a plain 4xx, not a stream)."""
    if body.n > 1:
        raise HttpError(400, "n > 1 cannot be streamed: ask for n = 1 or leave stream off", "n")
    deadline = await served.admit()
    loop, queue, work, usage = asyncio.get_running_loop(), asyncio.Queue(), Work(), {}

    def job():
        try:
            pieces = as_http(lambda: pieces_of(served, conversations, body, limits, work, usage))
            while True:
                piece = as_http(lambda: next(pieces, None))
                if piece is None or work.stopped:
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
        except Exception as exc:  # handed to the response: HttpError -> 4xx; anything else -> logged 500
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    served.start(job, work)

    async def next_item():
        try:
            return await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            work.stop.set()
            return "error", HttpError(504, f"model {served.name!r} did not finish within {served.timeout:g} s")

    try:
        first = await next_item()
    except asyncio.CancelledError:
        work.stop.set()
        raise
    if first[0] == "error":
        work.stop.set()
        raise first[1]
    ident, created = _completion_id(), int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> str:
        event = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": served.name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(event)}\n\n"

    async def events():
        item = first
        try:
            yield chunk({"role": "assistant", "content": ""})
            while item[0] == "piece":
                yield chunk({"content": item[1]})
                item = await next_item()
            if item[0] == "error":
                error = item[1] if isinstance(item[1], HttpError) else HttpError(500, "the model failed: see the log")
                yield f"data: {json.dumps(error.body())}\n\n"
            else:
                yield chunk({}, usage.get("finish_reason", "stop"))
                if include_usage:
                    yield f"data: {json.dumps({'id': ident, 'object': 'chat.completion.chunk', 'created': created, 'model': served.name, 'choices': [], 'usage': _usage(usage)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): the generation stops before its next token
            work.stop.set()

    return events()
