"""Guard: every registered family has its files in every layer and its own tests."""

from __future__ import annotations

from pathlib import Path

from edgevfm.benchmarks.families import BENCH
from edgevfm.export.spec import FAMILIES
from edgevfm.quantize.families import CALIBRATION
from edgevfm.runtime.pipeline import PIPELINES

TESTS = Path(__file__).parent


def test_every_family_is_in_every_layer():
    import edgevfm.runtime.families  # noqa: F401

    assert FAMILIES.names() == PIPELINES.names() == CALIBRATION.names() == BENCH.names()


def test_every_family_has_tests_and_presets():
    for name, spec in FAMILIES.items():
        tests = {p.name for p in TESTS.glob(f"test_*{name}*.py")}
        assert f"test_export_{name}.py" in tests and f"test_pipeline_{name}.py" in tests, f"{name}: {tests}"
        assert any(p.endswith("-tiny") for p in spec.presets), f"{name} needs a tiny preset for its tests"
