"""The ASGI app: routes, limits, keys, CORS, metrics and the loading of the bundles.

:func:`create_app` takes the bundles to serve and :class:`Options`; the bundles load in a
background thread when the app starts, and ``/health`` answers 503 until every one has loaded
(or says which failed). Every endpoint reads its body through :func:`read_json` (at most
``max_body_bytes``, else 413), checks it with its pydantic model, and answers OpenAI's error
shape for anything a client got wrong; only a fault of the server itself is a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import chat, sam, vision
from .errors import HttpError
from .images import ImageLimits
from .models import Served
from .requests import (CaptionRequest, ChatRequest, ClassifyRequest, EmbeddingsRequest, MatchRequest, SamEmbedRequest,
                       SamMasksRequest, SamSegmentRequest, parse)

STATIC = Path(__file__).parent / "static"
LOG = logging.getLogger("edgevfm.serve")


@dataclass(frozen=True)
class Options:
    images: ImageLimits = ImageLimits()
    max_body_bytes: int = 32 << 20
    api_keys: frozenset[str] = frozenset()
    cors_origins: tuple[str, ...] = ()
    sam_cache_bytes: int = 512 << 20
    open_paths: tuple[str, ...] = field(default=("/health", "/", "/static/index.html", "/static/app.js",
                                                 "/static/style.css"))


class Metrics:
    """Prometheus metrics of one app (its own registry: several apps may live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("edgevfm_requests", "requests answered", ["model", "endpoint", "status"],
                                registry=self.registry)
        self.seconds = Histogram("edgevfm_request_seconds", "time to answer (streams: to their end)",
                                 ["model", "endpoint"], registry=self.registry)
        self.in_flight = Gauge("edgevfm_in_flight", "requests running in a model's workers", ["model"],
                               registry=self.registry)
        self.queued = Gauge("edgevfm_queued", "requests waiting for a model's worker", ["model"],
                            registry=self.registry)
        self.loaded = Gauge("edgevfm_model_loaded", "1 once a model has loaded", ["model"], registry=self.registry)

    def watch(self, served: Served) -> None:
        """The model's queue gauges, read from it when /metrics is scraped (nothing per request)."""
        self.in_flight.labels(served.name).set_function(lambda: served.running)
        self.queued.labels(served.name).set_function(lambda: max(0, served.pending - served.running))
        self.loaded.labels(served.name).set(0)


class Auth:
    """Bearer keys (ASGI middleware): every path but ``Options.open_paths`` needs one when keys are set."""

    def __init__(self, app, keys: frozenset[str], open_paths: tuple[str, ...]):
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.keys and scope["path"] not in self.open_paths \
                and scope["method"] != "OPTIONS":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or key.strip() not in self.keys:
                error = HttpError(401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'")
                response = JSONResponse(error.body(), 401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_json(request: Request, limit: int):
    """The request's JSON body: 413 past ``limit`` bytes (read no further), 400 if it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"the body has {declared} bytes, more than the {limit} this server takes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"the body is over the {limit} bytes this server takes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=_no_constant)
    except HttpError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the body is not valid JSON ({exc})") from None


def _no_constant(name: str):
    raise HttpError(400, f"the body holds {name}, which JSON does not allow: send finite numbers")


def create_app(served: list[Served], options: Options = Options(), load: bool = True) -> Starlette:
    """The app serving ``served`` (each under its ``name``). With ``load``, the bundles load in a
    background thread when the app starts."""
    models = {s.name: s for s in served}
    metrics = Metrics()
    conversations = {s.name: chat.Conversations() for s in served}
    sam_caches = {s.name: sam.Embeddings(options.sam_cache_bytes) for s in served}
    for s in served:
        metrics.watch(s)

    def load_all():
        for s in served:
            s.load()
            metrics.loaded.labels(s.name).set(1 if s.pipeline is not None else 0)
            if s.error:
                LOG.error("model %s failed to load: %s", s.name, s.error)
            else:
                LOG.info("model %s loaded from %s", s.name, s.path)

    def model(name: str) -> Served:
        found = models.get(name)
        if found is None:
            raise HttpError(404, f"model {name!r} is not served here: expected one of {', '.join(sorted(models))}",
                            "model")
        return found

    def endpoint(kind, handler):
        async def answer(request: Request) -> Response:
            started, name, status = time.perf_counter(), "-", 500
            try:
                body = parse(kind, await read_json(request, options.max_body_bytes))
                target = model(body.model)
                name = target.name
                result = await handler(target, body, request)
                status = result.status_code if isinstance(result, Response) else 200
                return result if isinstance(result, Response) else JSONResponse(result)
            except HttpError as exc:
                status = exc.status
                return JSONResponse(exc.body(), exc.status, headers=exc.headers)
            except Exception:
                LOG.exception("%s failed", request.scope["path"])
                return JSONResponse(HttpError(500, "the server failed on this request: see its log").body(), 500)
            finally:
                path = request.scope["path"]
                metrics.requests.labels(name, path, str(status)).inc()
                metrics.seconds.labels(name, path).observe(time.perf_counter() - started)

        return answer

    async def chat_completions(target: Served, body: ChatRequest, request: Request):
        target.ready("chat" if "chat" in target.can else "answer", "/v1/chat/completions")
        if body.stream:
            events = await chat.stream(target, conversations[target.name], body, options.images,
                                       bool(body.stream_options and body.stream_options.get("include_usage")))
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await chat.complete(target, conversations[target.name], body, options.images)

    async def health(request: Request) -> Response:
        failed = {s.name: s.error for s in served if s.error}
        loading = [s.name for s in served if s.pipeline is None and not s.error]
        if failed:
            return JSONResponse({"status": "error", "failed": failed}, 503)
        if loading:
            return JSONResponse({"status": "loading", "loading": loading}, 503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": s.name, "object": "model", "created": s.created, "owned_by": "edgevfm", "family": s.family,
             "capabilities": s.can, "ready": s.pipeline is not None} for s in served]})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in {"index.html", "app.js", "style.css"}:
            return JSONResponse(HttpError(404, f"no file {name!r}").body(), 404)
        return FileResponse(STATIC / name)

    routes = [
        Route("/", page), Route("/static/{name}", static), Route("/health", health),
        Route("/metrics", prometheus), Route("/v1/models", list_models),
        Route("/v1/chat/completions", endpoint(ChatRequest, chat_completions), methods=["POST"]),
        Route("/v1/embeddings", endpoint(EmbeddingsRequest, lambda m, b, r: vision.embeddings(m, b, options.images)),
              methods=["POST"]),
        Route("/v1/classify", endpoint(ClassifyRequest, lambda m, b, r: vision.classify(m, b, options.images)),
              methods=["POST"]),
        Route("/v1/captions", endpoint(CaptionRequest, lambda m, b, r: vision.captions(m, b, options.images)),
              methods=["POST"]),
        Route("/v1/match", endpoint(MatchRequest, lambda m, b, r: vision.match(m, b, options.images)),
              methods=["POST"]),
        Route("/v1/sam/embed", endpoint(SamEmbedRequest, lambda m, b, r: sam.embed(
            m, sam_caches[m.name], b, options.images)), methods=["POST"]),
        Route("/v1/sam/segment", endpoint(SamSegmentRequest, lambda m, b, r: sam.segment(
            m, sam_caches[m.name], b, options.images)), methods=["POST"]),
        Route("/v1/sam/masks", endpoint(SamMasksRequest, lambda m, b, r: sam.masks(m, b, options.images)),
              methods=["POST"]),
    ]
    middleware = [Middleware(Auth, keys=options.api_keys, open_paths=options.open_paths)]
    if options.cors_origins:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.loop = asyncio.get_running_loop()  # where the served models' queues live
        if load:
            threading.Thread(target=load_all, name="edgevfm-load", daemon=True).start()
        yield
        for s in served:
            s.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.served, app.state.metrics, app.state.conversations = models, metrics, conversations
    return app
