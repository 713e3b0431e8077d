"""The README is a front page and docs/ holds the rest; every figure they quote comes from a
committed report (benchmarks/reports) that the page links to, and every link resolves.

A *figure* is a measured number as prose quotes it: a decimal (``0.9987``, ``21.7 ms``) or a
whole number with a unit of measure (``957 MB``, ``60%``, ``3x``), outside code. It is found when
some number in a report the page links to rounds to it at the figure's precision (a share may be
quoted as a percentage); the raw per-run timings do not count. Settings are not figures: a decimal written in the code (a floor such as ``0.999``)
is one, as are numbers in code spans and blocks (commands, options)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_LIMIT = 15_000
UNITS = r"(?:ms/token|tokens/s|GOP/s|GFLOP/s|GB/s|ms|s|minutes|MB|GB|%)"  # MiB, GiB: settings, not measures
# a number (not a version, not part of a name or path), with a unit after a space or "x" right after it
FIGURE = re.compile(rf"(?<![\w.\-/:])(\d+(?:\.\d+)?)(x|\s?{UNITS})?(?![\w.+]*\w|\+)")
SCALE = {"s": 1e3, "GB": 1e3}  # a report's milliseconds and megabytes quoted as seconds and gigabytes
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def prose(text: str) -> str:
    """``text`` without fenced code blocks, inline code, link targets and HTML comments."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"<!--.*?-->", " ", text, flags=re.S)


def figures(text: str) -> list[str]:
    """The figures quoted in ``text`` (see the module), as written."""
    found = []
    for match in FIGURE.finditer(prose(text)):
        number, unit = match.groups()
        if "." in number or unit:
            found.append(number + (unit or "").strip())
    return found


def _numbers(node, key: str = "") -> list[float]:
    """The numbers of a results.json, without the raw per-run timings (thousands of them would
    make any figure match by chance)."""
    if key == "times_ms":
        return []
    if isinstance(node, dict):
        return [n for k, v in node.items() for n in _numbers(v, k)]
    if isinstance(node, list):
        return [n for v in node for n in _numbers(v)]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [float(node)]
    return [float(t) for t in NUMBER.findall(node)] if isinstance(node, str) else []


def linked_reports(page: Path) -> tuple[Path, ...]:
    """The committed reports ``page`` links to: a report's folder, or a report file and the
    results.json beside it."""
    reports = (ROOT / "benchmarks" / "reports").resolve()
    found = set()
    for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
        path = (page.parent / target).resolve()
        if path.is_relative_to(reports) and path.exists():
            found.update([path] if path.is_file() else path.rglob("*"))
            if path.is_file() and (path.parent / "results.json").is_file() and path.parent != reports:
                found.add(path.parent / "results.json")
    return tuple(sorted(found))


@lru_cache(maxsize=None)
def reported(paths: tuple[Path, ...]) -> tuple[list[float], str]:
    """Every number in the report files ``paths`` (Markdown and results.json), and the code's text."""
    values: set[float] = set()
    for path in paths:
        if path.suffix == ".md":
            values.update(float(t) for t in NUMBER.findall(path.read_text()))
        elif path.suffix == ".json":
            values.update(_numbers(json.loads(path.read_text())))
    code = "\n".join(p.read_text() for layer in ("runtime", "export", "quantize", "benchmarks")
                     for p in (ROOT / layer).rglob("*.py"))
    return sorted(abs(v) for v in values), code


def in_reports(figure: str, paths: tuple[Path, ...]) -> bool:
    number = re.match(r"\d+(?:\.\d+)?", figure).group()
    places = len(number.split(".")[1]) if "." in number else 0
    values, code = reported(paths)
    if "." in number and re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", code):
        return True  # a setting the code holds (a floor, a default), not a measurement
    unit = figure[len(number):]
    step = 0.5 * 10 ** -places
    targets = [(float(number), step)]
    if unit == "%":
        targets.append((float(number) / 100, step / 100))
    if unit in SCALE:
        targets.append((float(number) * SCALE[unit], step * SCALE[unit]))
    return any(abs(v - t) <= s * 1.0001 for t, s in targets for v in values)


def test_the_figure_finder_finds_figures_and_leaves_code():
    text = "decodes 1.42x faster (21.7 against 30.7 ms), 957 MB, 60% of it; `--runs 30` and 12 layers\n```\n3.5 GB\n```"
    assert figures(text) == ["1.42x", "21.7", "30.7ms", "957MB", "60%"]


def test_the_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes: move the long parts to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_figure_comes_from_a_committed_report(page):
    paths = linked_reports(page)
    missing = [f for f in figures(page.read_text()) if not in_reports(f, paths)]
    assert missing == [], (f"{page.relative_to(ROOT)} quotes figures that none of the committed reports it links to "
                           f"({', '.join(str(p.relative_to(ROOT)) for p in paths if p.suffix == '.md') or 'none'}) "
                           f"holds: {missing}")


def _anchors(page: Path) -> set[str]:
    heads = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", " ", page.read_text(), flags=re.S)):
        if re.match(r"[a-z]+://", target):
            continue  # the web: not reachable from here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)} links to what does not exist: {broken}"


def test_the_code_cites_only_files_the_project_has():
    """A docstring or comment that names a page, a report or a module names one that exists."""
    cited = re.compile(r"(?<![\w/.-])((?:benchmarks|docs|runtime|export|quantize|tests)/[\w/.-]+\.(?:py|md|json)"
                       r"|[A-Z][A-Z_-]+\.md)\b")
    missing = [f"{path.relative_to(ROOT)}: {ref}"
               for layer in ("runtime", "export", "quantize", "benchmarks", "tests") for path in (ROOT / layer).rglob("*.py")
               for ref in cited.findall(path.read_text()) if not (ROOT / ref).exists()]
    assert missing == [], "\n".join(missing)
