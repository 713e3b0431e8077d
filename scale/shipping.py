"""A bundle that travels with a job, so that the cluster's nodes need no shared file system.

The driver packs the manifest and the files it lists into one uncompressed tar (:func:`pack`,
the weights compress poorly) and puts it in Ray's object store; each worker unpacks it once per
node into a cache folder named by the manifest's digest (:func:`unpack`) and opens it with the
runtime's ``load``, which checks every file against the manifest's sha256s: a copy changed on its
way, or a bundle changed on disk after its manifest was written, is refused with ``BundleError``
before a row is computed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgevfm.runtime.bundle import listed_files, read_manifest
from edgevfm.runtime.errors import BundleError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shipped:
    """A bundle as a job carries it: ``digest`` names it (sha256 of its manifest, which holds every
    file's sha256), ``path`` where the driver has it, ``archive`` its files when shipped (bytes, or
    a Ray object reference to them; ``None`` when the workers open ``path`` themselves) and
    ``archive_digest`` the archive's sha256, which names its unpacked copy on a node."""
    digest: str
    path: str
    archive: object = None
    archive_digest: str = ""


def digest(path: str | os.PathLike) -> str:
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()


def pack(path: str | os.PathLike) -> bytes:
    """The manifest and every file it lists, as one tar; nothing else in the folder travels."""
    root = Path(path)
    files = listed_files(read_manifest(root))
    if files is None:
        raise BundleError(root, ["the manifest lists no files, so the bundle cannot be shipped: re-export it"])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in [MANIFEST, *files]:
            tar.add(root / name, arcname=name, recursive=False)
    return buffer.getvalue()


def cache_root() -> Path:
    return Path(os.environ.get("EDGEVFM_BUNDLE_CACHE") or Path(tempfile.gettempdir()) / "edgevfm-bundles")


def unpack(archive: bytes, name: str) -> Path:
    """The shipped bundle as a folder on this node: unpacked once per node into
    ``cache_root()/<digest>``, beside it first and renamed into place, so that workers racing on one
    node share one complete copy. The copy is not trusted: loading it checks the hashes."""
    target = cache_root() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            tar.extractall(stage, filter="data")  # refuses absolute paths, '..' and links out of the folder
        try:
            stage.rename(target)
        except OSError:  # another worker on this node put its copy there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def verified_copy(bundle: Shipped) -> Path:
    """The folder this node opens ``bundle`` from, its files checked against the manifest's
    sha256s; a shipped copy that fails is removed (the next job unpacks it again) and the
    ``BundleError`` raised."""
    from edgevfm.runtime.bundle import open_bundle

    if bundle.archive is None:
        return open_bundle(bundle.path).path
    archive = bundle.archive
    if not isinstance(archive, (bytes, bytearray)):  # a reference to the object store's copy
        import ray

        archive = ray.get(archive)
    folder = unpack(archive, f"{bundle.digest[:16]}-{bundle.archive_digest[:16]}")
    try:
        open_bundle(folder)
    except BundleError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def open_shipped(bundle: Shipped, threads: int | None):
    """The pipeline of a job's bundle on this node (:func:`verified_copy`)."""
    from edgevfm.runtime.pipeline import load

    return load(verified_copy(bundle), threads=threads)
