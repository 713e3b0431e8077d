"""Guard: every registered family has its files in every layer and its own tests."""

from __future__ import annotations

from pathlib import Path

from edgevfm.benchmarks.families import BENCH
import edgevfm.export.families  # noqa: F401  (registers the specs, whatever ran before)
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


def test_every_family_is_in_the_hostile_suite():
    """Each family's manifest, images and prompts are fuzzed (README: the hostile suite)."""
    import test_hostile_inputs
    import test_hostile_manifest

    for name in FAMILIES.names():
        assert name in test_hostile_manifest.FAMILIES, f"{name}: add it to the manifest fuzzing"
        assert name in test_hostile_inputs.FAMILIES, f"{name}: add it to the image fuzzing"
        prompt_fuzzers = [f for f in dir(test_hostile_inputs) if f.startswith(f"test_fuzzed_{name}_")]
        assert prompt_fuzzers, f"{name}: add test_fuzzed_{name}_<prompt>_... to tests/test_hostile_inputs.py"
