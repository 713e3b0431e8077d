"""Hostile: output paths. ``--force`` replaces only an edgevfm bundle, never the input, never a
file or another folder; a killed export or quantize loses nothing and its leftovers are cleaned by
the next run that writes beside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from edgevfm.runtime import open_bundle
from edgevfm.runtime.bundle import write_manifest
from edgevfm.runtime.cli import main
from edgevfm.runtime.errors import OutputError
from edgevfm.runtime.output import exchange, clean_stale, staged_bundle

from helpers import copy_bundle, write_fake_bundle


def _manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_force_never_deletes_a_folder_of_photos(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"precious")
    assert main(["export", "random:clip-tiny", "-o", str(photos), "--force"]) == 3
    assert "is not an edgevfm bundle" in capsys.readouterr().err
    assert (photos / "holiday.jpg").read_bytes() == b"precious"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("where", ["parent", "itself", "a part file", "inside"])
def test_quantize_force_never_touches_its_input(clip_bundle, tmp_path, capsys, where):
    source = copy_bundle(clip_bundle, tmp_path / "models" / "clip-fp32")
    (tmp_path / "models" / "notes.txt").write_text("mine")
    out = {"parent": source.parent, "itself": source, "a part file": source / "vision.onnx",
           "inside": source / "int8"}[where]
    before = _manifest(source)
    assert main(["quantize", str(source), "--recipe", "int8-dynamic", "-o", str(out), "--force"]) == 3
    assert "is the input" in capsys.readouterr().err
    assert _manifest(source) == before and open_bundle(source)  # hashes still match
    assert (tmp_path / "models" / "notes.txt").read_text() == "mine"


def test_output_that_is_a_file_is_refused_even_with_force(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("keep")
    with pytest.raises(OutputError, match="is a file, not a bundle folder"):
        with staged_bundle(target, force=True):
            pass
    assert target.read_text() == "keep"


def test_empty_folder_is_a_valid_output_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with staged_bundle(out) as stage:
        write_manifest(stage, {"family": "x"})
    assert (out / "manifest.json").is_file()


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgevfm.runtime.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_once_staging(proc: subprocess.Popen, folder, name: str, timeout: float = 180) -> None:
    """SIGKILL ``proc`` as soon as its hidden stage beside ``name`` holds an ONNX file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(stage.glob("*.onnx") for stage in folder.glob(f".{name}.edgevfm-*.partial")):
            proc.kill()
            proc.wait()
            return
        assert proc.poll() is None, "the run ended before it could be killed mid-way"
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    pytest.fail("no stage folder appeared")


def test_kill_9_during_export_leaves_nothing_the_next_run_keeps(tmp_path):
    from edgevfm.export.api import export

    out = tmp_path / "clip"
    _kill_once_staging(_spawn(["export", "random:clip-tiny", "-o", str(out)]), tmp_path, "clip")
    assert not out.exists()
    assert len(_hidden(tmp_path)) == 1  # the dead run's stage
    export("random:clip-tiny", out, show_progress=False)
    assert open_bundle(out).family == "clip"
    assert _hidden(tmp_path) == []


def test_kill_9_during_quantize_force_keeps_the_old_bundle(clip_bundle, tmp_path):
    from edgevfm.quantize.api import quantize

    out = copy_bundle(clip_bundle, tmp_path / "clip-int8")
    before = _manifest(out)
    proc = _spawn(["quantize", str(clip_bundle), "--recipe", "int8-static", "--samples", "4", "-o", str(out),
                   "--force"])
    _kill_once_staging(proc, tmp_path, "clip-int8")
    assert _manifest(out) == before and open_bundle(out)
    quantize(clip_bundle, "int8-dynamic", out, force=True, show_progress=False)
    assert _manifest(out)["recipe"]["name"] == "int8-dynamic"
    assert _hidden(tmp_path) == []


def test_death_between_the_two_renames_loses_nothing(tmp_path):
    """Where no atomic exchange exists, the old bundle is renamed aside first; a process that dies
    right then leaves it in a .old folder, which the next writer beside it puts back."""
    out = write_fake_bundle(tmp_path / "bundle")
    code = textwrap.dedent(f"""
        import os
        from edgevfm.runtime import output
        from edgevfm.runtime.bundle import write_manifest
        output.exchange = lambda a, b: False  # as on a system without renameat2
        real_rename = os.rename
        def rename_then_die(a, b):
            real_rename(a, b)
            os._exit(9)  # dies between the first rename and the second
        os.rename = rename_then_die
        with output.staged_bundle({str(out)!r}, force=True) as stage:
            (stage / "weights.onnx").write_text("new weights")
            write_manifest(stage, {{"family": "clip"}})
    """)
    assert subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL).returncode == 9
    assert not out.exists()
    assert [name.endswith(".old") for name in _hidden(tmp_path)].count(True) == 1
    with staged_bundle(tmp_path / "another") as stage:  # any writer beside it repairs
        write_manifest(stage, {"family": "x"})
    assert (out / "weights.onnx").read_text() == "old weights" and open_bundle(out).manifest["source"]["id"] == "old"
    assert _hidden(tmp_path) == []


def test_the_swap_is_atomic_on_this_system(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").touch()
    if not exchange(a, b):
        pytest.skip("this file system has no renameat2(RENAME_EXCHANGE): the two-rename path is tested above")
    assert (b / "from_a").exists() and not (a / "from_a").exists()


def test_cleanup_touches_only_stages_of_dead_runs(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.edgevfm-{dead.pid}-abc123.partial"
    live = tmp_path / f".out.edgevfm-{os.getpid()}-def456.partial"
    mine = tmp_path / ".out.edgevfm-notes"
    for folder in (stale, live, mine):
        folder.mkdir()
    assert clean_stale(tmp_path) == [stale]
    assert _hidden(tmp_path) == sorted([live.name, mine.name])
