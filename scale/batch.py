"""``edgevfm batch``: one bundle over a collection of images, as a Ray Data job.

The driver reads the source's rows (:mod:`.sources`), leaves out those an earlier run already wrote
(``resume``), and maps the rest through :class:`Worker`, a callable class Ray starts ``workers``
times: each loads the bundle once (shipped to its node when the job runs on a cluster:
:mod:`.shipping`) and runs the task (:mod:`.tasks`) on batches, reading and decoding every image
itself through the runtime's image loader. An image that cannot be read or used becomes a row with
an ``error``, never a lost block or a failed job; a bundle that cannot be used fails the job with
the runtime's error.

The driver writes the results as they stream back: Parquet shards ``part-NNNNNN.parquet``, each
written beside its name and renamed into place, so a job killed at any moment leaves only whole
shards, and ``resume`` skips exactly their rows. ``summary.json`` counts every shard's rows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from edgevfm.runtime.bundle import read_manifest
from edgevfm.runtime.errors import EdgeVfmError, InputError, OutputError
from edgevfm.runtime.image import load_image
from edgevfm.runtime.pipeline import PIPELINES, load

from .cluster import connected, edgevfm_error, ship, verify_on_nodes
from .shipping import Shipped, digest, open_shipped
from .sources import IMAGE, PATH, TEXT, read_image_bytes, read_source
from .tasks import CAPTIONER, FILTER, TASKS, BatchTask, check_pipeline

ROLES = (CAPTIONER, FILTER)  # the bundles' names in BatchJob.bundles: BUNDLE, and capfilt's --filter

SHARD = "part-{:06d}.parquet"
JOB, SUMMARY = "job.json", "summary.json"
BASE_COLUMNS = {PATH: pa.string(), "error": pa.string(), "error_kind": pa.string(), "bundle": pa.string(),
                "node": pa.string(), "read_ms": pa.float32(), "decode_ms": pa.float32(), "model_ms": pa.float32()}
STAGES = ("read_ms", "decode_ms", "model_ms")


@dataclass
class BatchJob:
    """What ``edgevfm batch`` was asked: ``bundles`` by role (``bundle``; capfilt's ``filter``),
    the task and its options, where the rows come from and where they go."""
    bundles: dict[str, str]
    task: str
    source: str
    output: str
    options: dict = field(default_factory=dict)
    workers: int | None = None  # default: the cluster's CPUs // threads
    threads: int = 1
    batch_size: int = 16
    address: str | None = None  # None: a Ray started here for this job; "auto" or "ray://host:port"
    ship: bool | None = None  # send the bundles through the object store (default: when address is given)
    resume: bool = False
    shard_rows: int = 1000


def output_schema(task: BatchTask) -> pa.Schema:
    return pa.schema([*BASE_COLUMNS.items(), *task.columns.items()])


class Worker:
    """One Ray Data actor: the job's pipelines, loaded once, and the task run on batches."""

    def __init__(self, task: str, options: dict, bundles: dict, threads: int, checked: dict | None = None):
        """``checked``: {node: {role: folder}} that :func:`.cluster.verify_on_nodes` checked against
        the manifests just before the workers started; a worker on such a node opens that folder
        without hashing it again, one on a node that joined since checks its own copy."""
        import ray

        self.task, self.options = TASKS.get(task), options
        self.schema = output_schema(self.task)
        self.digest = bundles[CAPTIONER].digest
        self.node = ray.get_runtime_context().get_node_id()
        self.failure = None
        try:
            here = (checked or {}).get(self.node, {})
            pipelines = {role: load(here[role], threads=threads, verify_hashes=False) if role in here
                         else open_shipped(b, threads) for role, b in bundles.items()}
            self.paths = {role: str(p.bundle.path) for role, p in pipelines.items()}
            self.state = self.task.setup(pipelines, options)
        except EdgeVfmError as exc:  # raised by the first batch: the job fails with the runtime's error
            self.failure = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise self.failure
        paths = batch.column(PATH).to_pylist()
        blobs = batch.column(IMAGE).to_pylist() if IMAGE in batch.column_names else [None] * len(paths)
        texts = batch.column(TEXT).to_pylist() if TEXT in batch.column_names else [None] * len(paths)
        rows = [{PATH: p, "bundle": self.digest, "node": self.node} for p in paths]
        good = []
        for i, (path, blob) in enumerate(zip(paths, blobs)):
            start = time.perf_counter()
            try:
                data = blob if blob is not None else read_image_bytes(path)
                read = time.perf_counter()
                image = load_image(data)
                rows[i].update(read_ms=1e3 * (read - start), decode_ms=1e3 * (time.perf_counter() - read))
                good.append((i, image))
            except EdgeVfmError as exc:
                rows[i].update(error=str(exc), error_kind=type(exc).__name__)
        self._run(good, texts, rows)
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _run(self, good: list, texts: list, rows: list) -> None:
        """The task on the decoded images at once; if that fails on an input, on each alone, so
        that only the rows at fault carry the error."""
        if not good:
            return
        start = time.perf_counter()
        try:
            results = self.task.run(self.state, [im for _, im in good], [texts[i] for i, _ in good], self.options)
        except EdgeVfmError:
            if len(good) == 1:
                raise
            for one in good:
                try:
                    self._run([one], texts, rows)
                except EdgeVfmError as exc:
                    rows[one[0]].update(error=str(exc), error_kind=type(exc).__name__)
            return
        share = 1e3 * (time.perf_counter() - start) / len(good)
        for (i, _), result in zip(good, results):
            rows[i].update(result, model_ms=share)


def run_batch(job: BatchJob, log=print) -> dict:
    """Run ``job`` to the end and return its summary (also written to ``summary.json``)."""
    task = TASKS.get(job.task)
    _check_options(job, task)
    bundles = {role: _checked_bundle(task, role, path) for role, path in job.bundles.items()}
    out = Path(job.output)
    record = json.loads(json.dumps({"task": job.task, "options": job.options, "source": str(job.source),
                                    "bundles": {r: b.digest for r, b in bundles.items()}}))  # as job.json reads back
    table = read_source(job.source)
    if task.needs_text and TEXT not in table.column_names and not job.options.get("question") \
            and job.task != "capfilt":
        raise InputError(f"task {job.task!r} needs a question: pass --question, or an --input table with a "
                         f"{TEXT!r} column")
    created = not out.exists()
    done = _prepare_output(out, record, job.resume)
    if done:
        keep = pa.array([p not in done for p in table.column(PATH).to_pylist()])
        table = table.filter(keep)
    started = time.perf_counter()
    run = {"rows": table.num_rows, "workers": 0, "run_s": 0.0, "stats": "", "copies": {}}
    if table.num_rows:
        try:
            run.update(_execute(job, task, bundles, table, out, log))
        except BaseException:
            if created and not list(out.glob("part-*.parquet")):  # leave nothing behind that holds no result
                shutil.rmtree(out, ignore_errors=True)
            raise
    summary = _summarize(out, job, {**run, "wall_s": time.perf_counter() - started})
    log(f"batch {job.task}: {summary['rows']} rows, {summary['errors']} errors, {summary['images_per_s']:.2f} "
        f"images/s ({run['rows']} rows this run in {run['run_s']:.1f} s, {summary['this_run']['wall_s']:.1f} s "
        f"with Ray's start) -> {out}")
    return summary


def _check_options(job: BatchJob, task: BatchTask) -> None:
    missing = [role for role in task.bundles if role not in job.bundles]
    if missing:
        raise InputError(f"task {task.name!r} needs {' and '.join('--' + m for m in missing)}: {task.takes}")
    if task.name == "classify" and not job.options.get("labels"):
        raise InputError("task 'classify' needs --labels: pass at least one label")
    if task.name == "capfilt" and job.options.get("threshold") is None:
        raise InputError("task 'capfilt' needs --threshold: the ITM probability a caption must reach (0 to 1)")
    for name in ("workers", "threads", "batch_size", "shard_rows"):
        value = getattr(job, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a whole number of at least 1, found {value!r}")


def _checked_bundle(task: BatchTask, role: str, path: str) -> Shipped:
    """The bundle's digest once its manifest reads and its family can run the task (the files'
    hashes are checked where the bundle is opened: on the workers)."""
    from edgevfm.runtime import families  # noqa: F401 (registers the pipelines)

    manifest = read_manifest(path)
    cls = PIPELINES.get(manifest["family"]).variant(manifest)
    check_pipeline(task, cls, path, manifest["family"], role)
    return Shipped(digest(path), str(path))


def _prepare_output(out: Path, record: dict, resume: bool) -> set[str]:
    """The rows already written (``resume``); refuses an output folder that holds anything else."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output {str(out)!r} is a file: pass a folder (new, empty, or a job's to --resume)")
    shards = sorted(out.glob("part-*.parquet")) if out.is_dir() else []
    if out.is_dir() and any(out.iterdir()):
        previous = json.loads((out / JOB).read_text()) if (out / JOB).is_file() else None
        if previous is None:
            raise OutputError(f"--output {str(out)!r} holds other files: pass a new or empty folder")
        if not resume and shards:
            raise OutputError(f"--output {str(out)!r} holds a job's results: pass --resume to finish it, or "
                              "another folder")
        if shards and previous != record:
            changed = sorted(k for k in record if previous.get(k) != record[k])
            raise OutputError(f"--resume: {str(out)!r} was written by another job (its {', '.join(changed)} "
                              "differ): resume with the same bundle, task, options and input, or use a new folder")
    for stale in [*out.glob(".part-*.tmp"), *out.glob(f".{JOB}.tmp"), *out.glob(f".{SUMMARY}.tmp")]:
        stale.unlink()  # what a killed run of this job did not finish writing: a shard's rows are computed again
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / JOB, record)
    return {p for shard in shards for p in pq.read_table(shard, columns=[PATH]).column(PATH).to_pylist()}


def _execute(job: BatchJob, task: BatchTask, bundles: dict, table: pa.Table, out: Path, log) -> dict:
    """Run the rows through the workers; the workers' count, the seconds from the dataset's start
    to its last shard, and Ray Data's stats."""
    with connected(job.address) as ray:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = job.workers or max(1, cpus // job.threads)
        ship_them = job.ship if job.ship is not None else job.address is not None
        if ship_them:
            bundles = {role: ship(b) for role, b in bundles.items()}
        copies = verify_on_nodes(bundles)
        blocks = [table.slice(i, job.batch_size) for i in range(0, table.num_rows, job.batch_size)]
        workers = min(workers, len(blocks))  # a worker with no batch to take would load the bundle for nothing
        ds = ray.data.from_arrow(blocks).map_batches(
            Worker, fn_constructor_kwargs={"task": job.task, "options": job.options, "bundles": bundles,
                                           "threads": job.threads, "checked": copies},
            batch_size=job.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=job.threads)
        log(f"batch {job.task}: {table.num_rows} rows on {workers} workers x {job.threads} threads"
            f"{' (bundles shipped)' if ship_them else ''}")
        start = time.perf_counter()
        try:
            _write_shards(ds, out, job.shard_rows, output_schema(task))
        except Exception as exc:
            raise edgevfm_error(exc) or exc
        return {"workers": workers, "run_s": time.perf_counter() - start, "stats": ds.stats(), "copies": copies}


def _write_shards(ds, out: Path, shard_rows: int, schema: pa.Schema, flush_s: float = 10.0) -> None:
    number = 1 + max((int(p.stem.split("-")[1]) for p in out.glob("part-*.parquet")), default=-1)
    pending, rows, last = [], 0, time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        pending.append(batch)
        rows += batch.num_rows
        if rows >= shard_rows or time.monotonic() - last >= flush_s:
            _write_shard(out / SHARD.format(number), pa.concat_tables(pending).cast(schema))
            number, pending, rows, last = number + 1, [], 0, time.monotonic()
    if pending:
        _write_shard(out / SHARD.format(number), pa.concat_tables(pending).cast(schema))


def _write_shard(path: Path, table: pa.Table) -> None:
    stage = path.with_name(f".{path.stem}.tmp")
    pq.write_table(table, stage)
    with open(stage, "rb") as f:
        os.fsync(f.fileno())
    os.replace(stage, path)


def _summarize(out: Path, job: BatchJob, run: dict) -> dict:
    shards = sorted(out.glob("part-*.parquet"))
    flags = [name for name, kind in TASKS.get(job.task).columns.items() if kind == pa.bool_()]
    columns = [PATH, "error_kind", "node", *STAGES, *flags]
    table = pa.concat_tables([pq.read_table(s, columns=columns) for s in shards]) if shards else None
    kinds = Counter(k for k in (table.column("error_kind").to_pylist() if table else []) if k)
    stage_s = {s.replace("_ms", "_s"): round(float(pa.compute.sum(table.column(s)).as_py() or 0) / 1e3, 3)
               for s in STAGES} if table else {}
    summary = {
        "task": job.task, "bundles": dict(job.bundles), "source": job.source,
        "rows": table.num_rows if table else 0, "errors": sum(kinds.values()), "errors_by_kind": dict(kinds),
        "counts": {f: _true_false(table.column(f)) for f in flags} if table else {},
        "shards": len(shards), "rows_by_node": dict(Counter(table.column("node").to_pylist())) if table else {},
        "images_per_s": round(run["rows"] / run["run_s"], 3) if run["run_s"] > 0 else 0.0,
        "this_run": {"rows": run["rows"], "run_s": round(run["run_s"], 3), "wall_s": round(run["wall_s"], 3),
                     "workers": run["workers"], "threads": job.threads, "batch_size": job.batch_size},
        "bundle_copies": run["copies"], "stage_seconds": stage_s, "ray_stats": run["stats"], "job": asdict(job),
    }
    _write_json(out / SUMMARY, summary)
    return summary


def _true_false(column) -> dict:
    values = column.to_pylist()
    return {"true": values.count(True), "false": values.count(False)}


def _write_json(path: Path, value: dict) -> None:
    stage = path.with_name(f".{path.name}.tmp")
    stage.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(stage, path)
