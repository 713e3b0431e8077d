"""The CLI's help is read from the registries, so it cannot drift from them: every registered recipe
(with the families it is for), task and the demo's models and runs appear in the help of the
command that takes them (every preset: test_cli_defaults.py); the runtime's commands and every
layer's are in ``edgevfm --help``."""

from __future__ import annotations

import re

import pytest

from edgevfm.benchmarks.commands import DEFAULT_MODELS
from edgevfm.benchmarks.families import BENCH
from edgevfm.quantize import families as quantize_families  # noqa: F401  (registers the family recipes)
from edgevfm.quantize.families import CALIBRATION
from edgevfm.quantize.recipes import RECIPES
from edgevfm.runtime import families as runtime_families  # noqa: F401  (registers the tasks)
from edgevfm.runtime.cli import main
from edgevfm.runtime.tasks import TASKS


def _help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_quantize_help_lists_every_registered_recipe_with_its_families(capsys):
    text = _help(capsys, "quantize")
    recipes, samples = text.split("recipes (RECIPE):")[1].split("--samples by family:")
    listed = dict(re.findall(r"^  (\S+) +(.*)$", recipes, re.M))
    assert sorted(listed) == sorted(RECIPES.names() + ["auto"])
    for name, recipe in RECIPES.items():
        assert listed[name].startswith((f"[{', '.join(recipe.families)}] " if recipe.families else "") + recipe.backend)
        assert recipe.description in listed[name]
    for family, feeds in CALIBRATION.items():
        assert f"{family} {feeds.default_samples}" in samples


def test_demo_help_names_its_models_and_each_familys_runs(capsys):
    text = "".join(_help(capsys, "demo").split())  # argparse wraps at spaces and hyphens
    assert f"default:{','.join(DEFAULT_MODELS)};" in text
    for family, bench in BENCH.items():
        quick = bench.demo_runs if bench.quick_runs is None else bench.quick_runs
        assert f"{family}:{quick}(makedemo),{bench.demo_runs}with--variants" in text


def test_run_help_lists_every_task(capsys):
    text = _help(capsys, "run")
    for name, task in TASKS.items():
        assert re.search(rf"^ +{name} +\[{'/'.join(task.families)}\]", text, re.M), name


def test_every_command_is_in_the_main_help(capsys):
    text = _help(capsys)
    for command in ("export", "quantize", "run", "bench", "info", "demo"):
        assert re.search(rf"^ +{command} ", text, re.M), command
