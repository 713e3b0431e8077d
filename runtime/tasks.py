"""``edgevfm run BUNDLE TASK ...``: each family registers the tasks its pipeline answers, so the
CLI stays generic. A task adds its arguments to an argparse parser and runs on a loaded pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .registry import Registry

TASKS: Registry["Task"] = Registry("task")


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    help: str
    add_arguments: Callable  # (argparse.ArgumentParser) -> None
    run: Callable  # (pipeline, argparse.Namespace) -> None


def register_task(task: Task) -> Task:
    return TASKS.register(task.name)(task)


def tasks_of(family: str) -> list[str]:
    return [name for name, task in TASKS.items() if task.family == family]
