"""``edgevfm info``: what a bundle holds, as data and as text."""

from __future__ import annotations

from pathlib import Path

from .bundle import open_bundle


def bundle_info(path: str | Path) -> dict:
    """Family, source, recipe and, per part, precision, backend and size on disk (bytes)."""
    bundle = open_bundle(path)
    m = bundle.manifest
    return {
        "path": str(bundle.path),
        "family": bundle.family,
        "format_version": m["format_version"],
        "source": m["source"],
        "recipe": _recipe(m.get("recipe") or {}),
        "parts": {name: {"file": p.path.name, "precision": p.precision, "backend": p.backend,
                         "compute": p.compute, "bytes": p.path.stat().st_size,
                         "inputs": {i["name"]: i["shape"] for i in p.inputs},
                         "outputs": {o["name"]: o["shape"] for o in p.outputs}}
                  for name, p in bundle.parts.items()},
        "total_bytes": bundle.size_bytes(),
        "tools": m.get("tools", {}),
    }


def format_info(info: dict) -> str:
    src = info["source"]
    lines = [f"{info['path']}: {info['family']} bundle (format {info['format_version']}), recipe {info['recipe']}",
             f"  source: {src['id']}" + (f" @ {src['revision']}" if src.get("revision") else ""),
             f"  size:   {info['total_bytes'] / 1e6:.1f} MB"]
    for name, part in info["parts"].items():
        ins = ", ".join(f"{k}{v}" for k, v in part["inputs"].items())
        outs = ", ".join(f"{k}{v}" for k, v in part["outputs"].items())
        floats = f" (float ops in {part['compute']})" if part["compute"] else ""
        lines.append(f"  part {name}: {part['precision']}{floats} on {part['backend']}, {part['bytes'] / 1e6:.1f} MB, "
                     f"{part['file']}  ({ins}) -> ({outs})")
    return "\n".join(lines)


def _recipe(recipe: dict) -> str:
    """The recipe's name; for ``auto``, what it chose and why."""
    if recipe.get("name") != "auto":
        return recipe.get("name", "fp32 (export)")
    auto = recipe.get("auto") or {}
    return f"auto, chose {recipe.get('chosen')}: {auto.get('why', '')}"
