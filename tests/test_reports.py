"""The committed reports re-derive unchanged: their goals are a function of what they measured and
recorded (rows, peaks, peers, the machine), not of the machine or the folders that derive them
again, so ``python -m edgevfm.benchmarks.report`` on a copy gives the same goals and the same
report, but for the line that says when it was derived."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgevfm.benchmarks.report import main

REPORTS = Path(__file__).resolve().parents[1] / "benchmarks" / "reports"
FAMILY_REPORTS = sorted(p.parent for p in REPORTS.glob("*/results.json"))


def test_every_family_has_a_committed_report():
    from edgevfm.benchmarks.families import BENCH

    found = {json.loads((folder / "results.json").read_text())["family"] for folder in FAMILY_REPORTS}
    assert found == set(BENCH.names())


@pytest.mark.parametrize("folder", FAMILY_REPORTS, ids=lambda p: p.name)
def test_a_committed_report_rederives_unchanged(folder, tmp_path, capsys):
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    assert main([str(copy)]) == 0
    before, after = (json.loads((f / "results.json").read_text()) for f in (folder, copy))
    assert after["goals"] == before["goals"]
    assert after["goals_rederived"]["what"] == before["goals_rederived"]["what"]
    lines = [(f / "report.md").read_text().splitlines() for f in (folder, copy)]
    changed = [i for i, (a, b) in enumerate(zip(*lines)) if a != b]
    assert len(lines[0]) == len(lines[1]) and changed == [2]  # "Produced by ... Goals re-derived ... on <time>"
