"""Writing bundles without ever losing data.

- :func:`check_out_dir` refuses, before any work, an output path that is a file, a symbolic link,
  a folder that is not an edgevfm bundle (even with ``--force``), the input or a folder holding it.
- :func:`staged_bundle` writes into a hidden folder beside the output, named after this process,
  and puts it in place only once complete. Where the system can, an existing bundle is swapped with
  the new one in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere two renames are
  used, and a process that dies between them leaves the old bundle in a ``.old`` folder that the
  next writer puts back.
- Every writer first cleans up the hidden folders of runs that died (killed, power cut) beside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .bundle import MANIFEST, not_a_bundle
from .errors import BundleExistsError, OutputError

_STAGED = re.compile(r"^\.(?P<name>.+)\.edgevfm-(?P<pid>\d+)-[a-z0-9_]+\.(?P<kind>partial|old)$")


def check_out_dir(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Raise unless a new bundle may be written at ``out``. A missing path or an empty folder may;
    an existing bundle may with ``force``; nothing else may, and never an input, a folder that
    holds one, or a path inside one."""
    out = Path(out)
    target = out.resolve()
    for source in inputs:
        held = Path(source).resolve()
        if target == held or held.is_relative_to(target) or target.is_relative_to(held):
            raise OutputError(f"output {out} is the input {source}, holds it or lies inside it: "
                              "write the new bundle to a folder of its own")
    if out.is_symlink():
        raise OutputError(f"output {out} is a symbolic link: pass the folder itself, or a new path")
    if not out.exists():
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir():
            raise OutputError(f"output {out} cannot be created: {parent} is a file, not a folder")
        return
    if not out.is_dir():
        raise OutputError(f"output {out} is a file, not a bundle folder; edgevfm never replaces it, even with "
                          "--force: choose a folder path")
    if not any(out.iterdir()):
        return
    reason = not_a_bundle(out)
    if reason is not None:
        raise OutputError(f"output folder {out} holds files and is not an edgevfm bundle ({reason}); --force "
                          "replaces only a bundle, so it was left untouched: choose a new or empty folder")
    if not force:
        raise BundleExistsError(out)


@contextlib.contextmanager
def staged_bundle(out: str | os.PathLike, force: bool = False,
                  inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a hidden folder beside ``out``; on success it replaces ``out``, on error it vanishes.

    The writer must put ``manifest.json`` last (see :func:`.bundle.write_manifest`).
    """
    out, inputs = Path(out), list(inputs)
    check_out_dir(out, force, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgevfm-{os.getpid()}-", suffix=".partial", dir=out.parent))
    try:
        yield stage
        if not (stage / MANIFEST).is_file():
            raise RuntimeError(f"internal error: bundle writer left no {MANIFEST}")
        check_out_dir(out, force, inputs)  # again: the output may have changed while the work ran
        _put_in_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _put_in_place(stage: Path, out: Path) -> None:
    if not out.exists():
        os.rename(stage, out)
    elif not exchange(stage, out):  # the stage now holds the old bundle, removed by the caller
        old = stage.with_name(stage.name[: -len(".partial")] + ".old")
        os.rename(out, old)
        os.rename(stage, out)  # dying before this leaves the old bundle in `old`: see clean_stale
        shutil.rmtree(old, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def clean_stale(folder: Path) -> list[Path]:
    """Remove the hidden folders that dead edgevfm runs left in ``folder``, and put back an old
    bundle that a run which died between its two renames had moved aside. Returns what it touched."""
    touched = []
    for entry in folder.iterdir():
        found = _STAGED.match(entry.name)
        if not found or not entry.is_dir() or entry.is_symlink() or _alive(int(found["pid"])):
            continue
        target = folder / found["name"]
        if found["kind"] == "old" and not target.exists() and not_a_bundle(entry) is None:
            os.rename(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        touched.append(entry)
    return touched


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
