"""The bundle: a folder with ``manifest.json`` that is the only contract between export/quantize
and the runtime.

The runtime trusts nothing in it: the manifest must parse and be of a format this edgevfm reads,
every file must stay inside the bundle and match its sha256, and the parts must carry the inputs
and outputs the family's pipeline needs. Every problem found goes into one ``BundleError``.

Writers go through :func:`staged_bundle`: files are written to a temporary sibling folder which is
renamed into place only once the manifest is complete, so no half-written bundle is ever left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import BundleError, BundleExistsError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_REQUIRED_KEYS = ("format_version", "family", "source", "parts", "files")
_PART_KEYS = ("file", "backend", "precision", "inputs", "outputs")


@dataclass(frozen=True)
class Part:
    """One compiled graph of a bundle (``vision``, ``text``, ``image_encoder``, ...)."""

    name: str
    path: Path
    backend: str
    precision: str
    inputs: list[dict]
    outputs: list[dict]


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def parts(self) -> dict[str, Part]:
        return {
            name: Part(name, self.path / p["file"], p["backend"], p["precision"], p["inputs"], p["outputs"])
            for name, p in self.manifest["parts"].items()
        }

    def file(self, relative: str) -> Path:
        """A file named by the manifest, checked to lie inside the bundle."""
        return _inside(self.path, relative)

    def size_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.manifest["files"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(root: Path, relative: str) -> Path:
    candidate = (root / relative).resolve()
    if os.path.isabs(relative) or not candidate.is_relative_to(root.resolve()):
        raise BundleError(root, [f"file {relative!r} lies outside the bundle: paths must be relative and inside it"])
    return candidate


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its format version; raises ``BundleError``."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(root, ["not a folder: expected a bundle folder made by `edgevfm export`"])
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(root, [f"no {MANIFEST}: expected a bundle made by `edgevfm export` or `edgevfm quantize`"])
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(root, [f"{MANIFEST} is not valid JSON ({exc}): re-export the bundle"]) from None
    if not isinstance(manifest, dict):
        raise BundleError(root, [f"{MANIFEST} holds a {type(manifest).__name__}, expected an object"])
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(root, [f"format_version is {version!r}, expected an integer"])
    if version > FORMAT_VERSION:
        raise BundleError(
            root,
            [f"format_version {version} is newer than this edgevfm reads ({FORMAT_VERSION}): upgrade edgevfm"],
        )
    return manifest


def check_bundle(root: Path, manifest: dict[str, Any], verify_hashes: bool = True) -> list[str]:
    """Every structural problem of a parsed manifest: keys, paths, files, hashes."""
    problems = [f"manifest has no {key!r}" for key in _REQUIRED_KEYS if key not in manifest]
    if problems:
        return problems
    files = manifest["files"]
    if not isinstance(files, dict) or not isinstance(manifest["parts"], dict) or not manifest["parts"]:
        return ["'files' and 'parts' must be non-empty objects"]
    for name, part in manifest["parts"].items():
        missing = [k for k in _PART_KEYS if k not in part]
        if missing:
            problems.append(f"part {name!r} lacks {', '.join(missing)}")
        elif part["file"] not in files:
            problems.append(f"part {name!r} names {part['file']!r}, which is not listed in 'files'")
    for relative, expected in files.items():
        try:
            path = _inside(root, relative)
        except BundleError as exc:
            problems.extend(exc.problems)
            continue
        if not path.is_file():
            problems.append(f"file {relative!r} is missing")
        elif verify_hashes and sha256_file(path) != expected:
            problems.append(f"file {relative!r} does not match its sha256 in the manifest: it was changed or corrupted")
    return problems


def open_bundle(path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    root = Path(path)
    manifest = read_manifest(root)
    problems = check_bundle(root, manifest, verify_hashes)
    if problems:
        raise BundleError(root, problems)
    return Bundle(root, manifest)


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise BundleExistsError(out)


@contextlib.contextmanager
def staged_bundle(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on error it vanishes.

    The writer must put ``manifest.json`` last (see :func:`write_manifest`).
    """
    out = Path(out)
    check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        if not (stage / MANIFEST).is_file():
            raise RuntimeError(f"internal error: bundle writer left no {MANIFEST}")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``stage`` into ``manifest['files']`` and write the manifest."""
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    manifest["files"] = {
        str(p.relative_to(stage)): sha256_file(p)
        for p in sorted(stage.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
