"""The layers import one way only (docs/architecture.md): runtime <- serve <- export <- quantize <- benchmarks <- scale.
Every import is walked, function-local ones and ``import_layer("edgevfm...")`` / ``import_module``
by name included, so no package imports one that imports it back; no module imports another's
private name; and the CLI's entry points name every layer's ``commands`` module."""

from __future__ import annotations

import ast
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("runtime", "serve", "export", "quantize", "benchmarks", "scale")  # each may import those before it, never after
DYNAMIC = ("import_layer", "import_module")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "edgevfm." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module imported, names taken from it) for every import in ``path``, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((node.lineno, base, [alias.name for alias in node.names]))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in DYNAMIC
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value, []))
    return found


def _sources() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The walker itself: a function-local import, a relative one and one by name are all found."""
    sample = ROOT / "quantize" / "commands.py"
    found = {target for _, target, _ in imports(sample)}
    assert {"edgevfm.runtime.commands", "edgevfm.quantize.choosers", "edgevfm.quantize.recipes",
            "edgevfm.quantize.families", "edgevfm.quantize.api"} <= found


def test_no_layer_imports_a_layer_above_it():
    upward = []
    for path in _sources():
        layer = LAYERS.index(path.relative_to(ROOT).parts[0])
        for line, target, _ in imports(path):
            parts = target.split(".")
            if parts[0] == "edgevfm" and len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > layer:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert upward == [], "\n".join(upward)


def test_no_private_name_is_imported_across_modules():
    """Nor by the tests: what a test needs is public."""
    private = [f"{path.relative_to(ROOT)}:{line} takes {name} from {target}"
               for path in _sources() + sorted((ROOT / "tests").glob("*.py")) for line, target, names in imports(path)
               for name in names if name.startswith("_") and target.startswith("edgevfm")]
    assert private == [], "\n".join(private)


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_every_layer_above_the_runtime_has_its_commands_entry_point(layer):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["edgevfm.commands"]
    installed = {point.name: point.value for point in entry_points(group="edgevfm.commands")}
    assert declared[layer] == f"edgevfm.{layer}.commands" == installed[layer]
    assert (ROOT / layer / "commands.py").is_file()
