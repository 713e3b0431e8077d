"""A small schema language for the manifest, which the runtime reads and trusts nothing of.

A check is a callable ``check(value, where, problems)`` that adds one line per problem to
``problems`` and never raises on bad data: every problem of a manifest is reported at once.
:class:`Problems` stops growing at its cap, and collections are measured before their items are
walked, so a hostile manifest can make validation neither slow nor its error huge.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable

MAX_PROBLEMS = 20
_SHORT = 60

Check = Callable[[Any, str, "Problems"], None]


class _Full(Exception):
    """Raised inside a validation when its problem list reached the cap."""


class Problems:
    """The problems found so far, capped at ``cap`` lines (one more says the list was cut).
    ``files`` is the set of files the manifest lists, for checks of file references (None: not
    known, because ``files`` itself is malformed and reported as such)."""

    def __init__(self, files: Iterable[str] | None = None, cap: int = MAX_PROBLEMS):
        self.items: list[str] = []
        self.cap = cap
        self.files = None if files is None else set(files)

    def add(self, message: str) -> None:
        if len(self.items) >= self.cap:
            self.items.append(f"... stopped after {self.cap} problems: fix these first")
            raise _Full
        self.items.append(message)

    def run(self, check: Check, value: Any, where: str) -> list[str]:
        """Apply ``check`` and return every problem (capped)."""
        try:
            check(value, where, self)
        except _Full:
            pass
        return self.items


def validate(value: Any, check: Check, where: str = "manifest", files: Iterable[str] | None = None) -> list[str]:
    return Problems(files).run(check, value, where)


def short(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."


_KINDS = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
          (dict, "an object"))  # bool first: it is an int too


def kind(value: Any) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    return next((name for type_, name in _KINDS if isinstance(value, type_)), type(value).__name__)


def bad_value(problems: Problems, where: str, value: Any, expected: str) -> None:
    shown = "" if isinstance(value, (dict, list)) or value is None else f" {short(value)}"
    problems.add(f"{where} is {kind(value)}{shown}, expected {expected}")


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def integer(low: int | None = None, high: int | None = None) -> Check:
    def check(value, where, problems):
        if not isinstance(value, int) or isinstance(value, bool):
            bad_value(problems, where, value, "an integer" + _range(low, high))
        elif (low is not None and value < low) or (high is not None and value > high):
            problems.add(f"{where} is {value}, expected an integer{_range(low, high)}")

    return check


def number(low: float | None = None, high: float | None = None, positive: bool = False) -> Check:
    """A finite number (an integer is a number) in [low, high]; ``positive``: above 0."""
    wanted = "a finite number" + (" above 0" if positive else _range(low, high))

    def check(value, where, problems):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            bad_value(problems, where, value, wanted)
        elif not math.isfinite(value) or (positive and value <= 0) or (low is not None and value < low) or (
                high is not None and value > high):
            problems.add(f"{where} is {short(value)}, expected {wanted}")

    return check


def string(choices: Iterable[str] | None = None, pattern: str | None = None, max_length: int = 256) -> Check:
    """A non-empty string; one of ``choices``, or matching ``pattern``, when given."""
    choices = sorted(choices) if choices is not None else None
    regex = re.compile(pattern) if pattern else None

    def check(value, where, problems):
        if not isinstance(value, str) or not value:
            bad_value(problems, where, value, "a non-empty string")
        elif len(value) > max_length:
            problems.add(f"{where} is a string of {len(value)} characters, expected at most {max_length}")
        elif choices is not None and value not in choices:
            problems.add(f"{where} is {short(value)}, expected one of {', '.join(choices)}")
        elif regex is not None and not regex.fullmatch(value):
            problems.add(f"{where} is {short(value)}, expected a string matching {pattern}")

    return check


def boolean() -> Check:
    def check(value, where, problems):
        if not isinstance(value, bool):
            bad_value(problems, where, value, "true or false")

    return check


def nullable(inner: Check) -> Check:
    def check(value, where, problems):
        if value is not None:
            inner(value, where, problems)

    return check


def list_of(item: Check, min_items: int = 0, max_items: int = 64, length: int | None = None) -> Check:
    low, high = (length, length) if length is not None else (min_items, max_items)

    def check(value, where, problems):
        if not isinstance(value, list):
            bad_value(problems, where, value, "a list")
        elif not low <= len(value) <= high:
            count = f"exactly {low}" if low == high else f"{low} to {high}"
            problems.add(f"{where} has {len(value)} items, expected {count}")
        else:
            for i, element in enumerate(value):
                item(element, f"{where}[{i}]", problems)

    return check


def obj(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """An object with the ``required`` keys and maybe the ``optional`` ones; other keys are
    allowed (newer writers may add some) and ignored."""
    optional = optional or {}

    def check(value, where, problems):
        if not isinstance(value, dict):
            bad_value(problems, where, value, f"an object with {', '.join(required) or 'keys'}")
            return
        for key, inner in required.items():
            if key not in value:
                problems.add(f"{where} has no {key!r}")
            else:
                inner(value[key], f"{where}.{key}", problems)
        for key, inner in optional.items():
            if key in value:
                inner(value[key], f"{where}.{key}", problems)

    return check


def dict_of(value_check: Check, key_check: Check | None = None, min_items: int = 0, max_items: int = 64) -> Check:
    """An object of any keys (checked by ``key_check``); its size is checked before its items."""
    key_check = key_check or string()

    def check(value, where, problems):
        if not isinstance(value, dict):
            bad_value(problems, where, value, "an object")
        elif not min_items <= len(value) <= max_items:
            problems.add(f"{where} has {len(value)} entries, expected {min_items} to {max_items}")
        else:
            for key, element in value.items():
                key_check(key, f"{where} key", problems)
                value_check(element, f"{where}[{short(key)}]", problems)

    return check


def listed_file() -> Check:
    """A relative path that the manifest's ``files`` lists (and so hashes)."""
    def check(value, where, problems):
        if not isinstance(value, str) or not value:
            bad_value(problems, where, value, "the relative path of a file listed in 'files'")
        elif problems.files is not None and value not in problems.files:
            problems.add(f"{where} names {short(value)}, which is not listed (and hashed) in 'files'")

    return check


def all_of(*checks: Check) -> Check:
    """Every check, stopping at the first that finds a problem (later ones may assume earlier)."""
    def check(value, where, problems):
        for inner in checks:
            before = len(problems.items)
            inner(value, where, problems)
            if len(problems.items) > before:
                return

    return check
