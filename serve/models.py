"""Each served bundle: its pipeline, what it can answer, and its queue.

A model runs at most ``workers`` requests at once, in its own threads (the runtime's pipelines may
serve many threads); up to ``queue_size`` more wait in those threads' queue, so that a worker that
finishes takes the next request itself, without a round trip through the event loop. One more is
a 503 with ``Retry-After`` instead of an ever-growing backlog. A request that has not finished
within ``timeout`` seconds (waiting included) is a 504; its work is told to stop (:class:`Work`)
and, if it has not started, never runs; a worker thread runs one request at a time, so timeouts
never let more work run than ``workers``.

Requests of one kind may be *batched* (:meth:`Served.batched`): a worker that takes one also takes
the others of its kind still waiting, up to a limit, and runs them in one model call, as Triton's
dynamic batcher and text-embeddings-inference do. Under load that spends one call where there were
many; alone, a request runs as it would unbatched."""

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
        self._lock = threading.Lock()  # the counts and the batches' waiting lists, shared by the loop and the workers
        self._waiting: dict[str, list[_Waiting]] = {}

    def load(self) -> None:
        from edgevfm.runtime import load

        try:
            # no spin-waiting: the server's other threads (HTTP, images) need the cores between runs
            self.pipeline = load(self.path, threads=self.threads, spin_wait=False)
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
        """Count a request in (it will wait in the workers' queue); returns its deadline. 503 when
        ``workers + queue_size`` requests are already running or waiting."""
        with self._lock:
            if self.pending >= self.workers + self.queue_size:
                raise HttpError(503, f"model {self.name!r} is busy: {self.pending} requests are running or queued "
                                f"(at most {self.workers + self.queue_size}); retry later",
                                headers={"Retry-After": "1"})
            self.pending += 1
        return time.monotonic() + self.timeout

    def start(self, job: Callable[[], Any], work: Work | None = None) -> asyncio.Future:
        """Queue ``job`` for this model's threads, on a place taken by :meth:`admit` (given back
        when the job ends, whatever the request does meanwhile). A job whose ``work`` was stopped
        before a worker reached it (its request timed out or left) is skipped. The counts change in
        the worker, under the lock: nothing but the result goes back to the event loop."""
        loop = asyncio.get_running_loop()

        def run():
            try:
                if work is not None and work.stopped:
                    return None
                with self._lock:
                    self.running += 1
                try:
                    return job()
                finally:
                    with self._lock:
                        self.running -= 1
            finally:
                self.release()

        return loop.run_in_executor(self._executor, run)

    def release(self) -> None:
        """Give back a place taken by :meth:`admit` (:meth:`start` does when its job ends)."""
        with self._lock:
            self.pending -= 1

    async def call(self, job: Callable[[Work], Any]) -> Any:
        """``job(work)`` in a worker thread: its result, or a 504 (and ``work`` told to stop) when
        the request's time is up."""
        deadline = await self.admit()
        work = Work()
        future = self.start(lambda: job(work), work)
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

    async def batched(self, kind: str, item: Any, run_many: Callable[[list], list], limit: int) -> Any:
        """``item``'s outcome from ``run_many(items)``, which takes a list of items of ``kind`` and
        returns one outcome for each, in order: a result, or the exception that item alone raised.
        The worker that takes this request runs it with up to ``limit - 1`` others of its kind that
        are still waiting; a request whose item another worker took just waits for that batch."""
        loop, deadline = asyncio.get_running_loop(), time.monotonic() + self.timeout
        entry = _Waiting(item, loop.create_future())
        with self._lock:
            self._waiting.setdefault(kind, []).append(entry)

        def job(work: Work):
            with self._lock:
                if entry.taken:
                    return
                waiting = self._waiting[kind]
                group = [entry] + [e for e in waiting if e is not entry][: limit - 1]
                for e in group:
                    e.taken = True
                    waiting.remove(e)
            try:
                outcomes = run_many([e.item for e in group])
            except Exception as exc:  # a fault of the batch as a whole: each request gets it
                outcomes = [exc] * len(group)
            for e, outcome in zip(group, outcomes):
                loop.call_soon_threadsafe(_settle, e.future, outcome)

        try:
            await self.call(job)
            # taken by another worker's batch: wait for it, within this request's own time
            outcome = await asyncio.wait_for(asyncio.shield(entry.future), max(0.0, deadline - time.monotonic()))
        except (HttpError, asyncio.CancelledError, TimeoutError) as exc:
            with self._lock:
                if not entry.taken:
                    self._waiting[kind].remove(entry)
            if isinstance(exc, TimeoutError):
                raise HttpError(504, f"model {self.name!r} did not answer within {self.timeout:g} s") from None
            raise
        if isinstance(outcome, BaseException):
            return as_http(lambda: _raise(outcome))
        return outcome

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Waiting:
    """A batched request's item, and the future its outcome is set on."""

    item: Any
    future: asyncio.Future
    taken: bool = False


def _settle(future: asyncio.Future, outcome: Any) -> None:
    if not future.done():
        future.set_result(outcome)


def _raise(exc: BaseException):
    raise exc
