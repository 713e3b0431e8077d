"""Ray for the scale layer: a Ray to run on (:func:`connected`), bundles put in its object store
(:func:`ship`) and checked on every node (:func:`verify_on_nodes`), and the edgevfm error a worker
raised, out of the layers Ray wraps it in (:func:`edgevfm_error`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os

from edgevfm.runtime.errors import EdgeVfmError

from .shipping import Shipped, pack, verified_copy


@contextlib.contextmanager
def connected(address: str | None):
    """The cluster at ``address`` ('auto', ray://HOST:PORT), or a local Ray with this machine's CPUs
    started for the ``with`` block and stopped after it (a new one: Ray would otherwise join any
    Ray running on the machine, another job's, which stops it when that job ends; ``RAY_ADDRESS``
    still names a cluster to join); a Ray this process already runs is used as it is."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def ship(bundle: Shipped) -> Shipped:
    """``bundle`` with its files packed into Ray's object store."""
    import ray

    archive = pack(bundle.path)
    return Shipped(bundle.digest, bundle.path, ray.put(archive), hashlib.sha256(archive).hexdigest())


def cpu_nodes() -> dict:
    """{node id: Ray's record} of the live nodes that have CPUs."""
    import ray

    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}


def verify_on_nodes(bundles: dict) -> dict:
    """Each node with CPUs checks its copy of the bundles before any worker starts (a Ray task
    pinned to it): a tampered or incomplete copy fails the job with the runtime's ``BundleError``.
    Returns {node: {role: the folder it opens}}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0)(_verify_here)
    nodes = list(cpu_nodes())
    calls = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(bundles)
             for node in nodes]
    try:
        return dict(zip(nodes, ray.get(calls)))
    except Exception as exc:
        raise edgevfm_error(exc) or exc


def _verify_here(bundles: dict) -> dict:
    return {role: str(verified_copy(b)) for role, b in bundles.items()}


def edgevfm_error(exc: BaseException) -> EdgeVfmError | None:
    """The edgevfm error a worker raised, out of the layers Ray wraps it in."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(e, EdgeVfmError) and type(e).__module__.startswith("edgevfm"):
            return e
        stack += [cause, e.__cause__, e.__context__]
    return None
