"""Each served bundle: its pipeline, what it can answer, and its queue.

A model runs at most ``workers`` requests at once, in its own threads (the runtime's pipelines may
serve many threads); up to ``queue_size`` more wait. One more is a 503 with ``Retry-After``
instead of an ever-growing backlog. A request that has not finished within ``timeout`` seconds
(waiting included) is a 504; its work is told to stop (:class:`Work`), and its worker slot stays
taken until the thread has really stopped, so that timeouts never let more work run than
``workers``."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import HttpError, as_http

# what a pipeline can answer, by the methods its class defines (BLIP's other tasks' methods are
# refusals found by __getattr__ on the instance, never on the class)
CAPABILITIES = {"chat": ("chat",), "answer": ("answer",), "caption": ("caption",), "embeddings": ("embedders",),
                "classify": ("classify",), "match": ("match",), "segment": ("predict", "embed")}


def capabilities(pipeline) -> list[str]:
    kind = type(pipeline)

    def has(method: str) -> bool:
        found = getattr(kind, method, None)
        return found is not None and not getattr(found, "refusal", False)

    return [name for name, methods in CAPABILITIES.items() if all(has(m) for m in methods)]


@dataclass
class Work:
    """A running request's stop flag: set at a timeout or when its client goes away; the work
    checks it between steps (tokens, for generation)."""

    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()


class Served:
    """One bundle served under ``name``; ``pipeline`` is None until it has loaded."""

    def __init__(self, name: str, path: Path, workers: int = 1, queue_size: int = 16, timeout: float = 120.0,
                 threads: int | None = None):
        self.name, self.path, self.threads = name, Path(path), threads
        self.workers, self.queue_size, self.timeout = workers, queue_size, timeout
        self.pipeline: Any = None
        self.error: str | None = None
        self.family: str | None = None
        self.can: list[str] = []
        self.pending = 0  # admitted and not finished: waiting + running
        self.running = 0
        self.created = int(time.time())
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"edgevfm-{name}")
        self._slots: asyncio.Semaphore | None = None
        self.on_change: Callable[["Served"], None] = lambda served: None  # metrics: queue depth, in flight

    def load(self) -> None:
        from edgevfm.runtime import load

        try:
            self.pipeline = load(self.path, threads=self.threads)
        except Exception as exc:  # the server stays up and says why on /health and to each request
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.family = self.pipeline.family
        self.can = capabilities(self.pipeline)

    def ready(self, capability: str, endpoint: str):
        """The pipeline, if it has loaded and answers ``capability``; else a 503 or a 400."""
        if self.pipeline is None:
            raise HttpError(503, f"model {self.name!r} failed to load: {self.error}" if self.error else
                            f"model {self.name!r} is still loading: retry shortly", headers={"Retry-After": "5"})
        if capability not in self.can:
            raise HttpError(400, f"model {self.name!r} ({self.family}) does not answer {endpoint}: it answers "
                            f"{', '.join(self.can) or 'nothing'}", "model")
        return self.pipeline

    async def admit(self) -> float:
        """Take a worker slot (waiting in the queue for one); returns the deadline. 503 when the
        queue is full, 504 when no slot frees before the timeout."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        if self.pending >= self.workers + self.queue_size:
            raise HttpError(503, f"model {self.name!r} is busy: {self.pending} requests are running or queued "
                            f"(at most {self.workers + self.queue_size}); retry later", headers={"Retry-After": "1"})
        deadline = time.monotonic() + self.timeout
        self.pending += 1
        self.on_change(self)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            self.pending -= 1
            self.on_change(self)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise HttpError(504, f"model {self.name!r} had no free worker within {self.timeout:g} s") from None
        return deadline

    def start(self, job: Callable[[], Any]) -> asyncio.Future:
        """Run ``job`` in this model's threads on a slot taken by :meth:`admit`; the slot is given
        back when the thread ends, whatever the request does meanwhile."""
        loop = asyncio.get_running_loop()

        def run():
            self.running += 1
            loop.call_soon_threadsafe(self.on_change, self)
            try:
                return job()
            finally:
                self.running -= 1
                loop.call_soon_threadsafe(self.release)

        return loop.run_in_executor(self._executor, run)

    def release(self) -> None:
        """Give back a slot taken by :meth:`admit` (:meth:`start` does when its thread ends)."""
        self.pending -= 1
        self._slots.release()
        self.on_change(self)

    async def call(self, job: Callable[[Work], Any]) -> Any:
        """``job(work)`` in a worker thread: its result, or a 504 (and ``work`` told to stop) when
        the request's time is up."""
        deadline = await self.admit()
        work = Work()
        future = self.start(lambda: job(work))
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            work.stop.set()
            raise HttpError(504, f"model {self.name!r} did not answer within {self.timeout:g} s") from None
        except asyncio.CancelledError:
            work.stop.set()
            raise

    async def answer(self, job: Callable[[], Any]) -> Any:
        """:meth:`call` of a job that needs no stop flag, runtime errors as 400s."""
        return await self.call(lambda work: as_http(job))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
