"""Trained presets that ship in the repository: ``export/presets/<name>/`` holds a folder saved
with ``save_pretrained`` (weights, config, tokenizer, processor), its ``loss.tsv`` and a
``preset.json`` naming the command that rebuilt it and every file's sha256.

``trained:<name>`` loads that folder through the family's own ``load_pretrained``, the path a hub
id or a user's folder takes, after :func:`verify` has checked its bytes: a preset is the same
bytes everywhere, and a clone without them (a Git LFS pointer, a partial checkout) is refused with
the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgevfm.export.errors import CheckpointError

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def preset_folder(name: str) -> Path:
    return PRESET_DIR / name


def card(name: str) -> dict:
    """The preset's ``preset.json``: command, seed, training figures, sha256 per file."""
    path = preset_folder(name) / "preset.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"trained:{name} has no readable {path} ({exc}): the preset folder is missing from "
                              "this copy of edgevfm; reinstall it, or rebuild it with training/"
                              f"{name.replace('-', '_')}.py") from None


def verify(name: str) -> Path:
    """The folder of ``trained:<name>`` once every file matches its recorded sha256."""
    folder = preset_folder(name)
    check_files(folder, card(name), f"trained:{name}")
    return folder


def check_files(folder: Path, meta: dict, label: str) -> None:
    """Every file ``meta`` (a ``preset.json``) lists has its recorded sha256 in ``folder``, else a
    CheckpointError naming ``label``, each file that differs and the command that rebuilds them."""
    wrong = []
    for file, digest in meta.get("sha256", {}).items():
        path = folder / file
        found = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if found != digest:
            wrong.append(f"{file} (expected sha256 {digest[:12]}..., found {found[:12]}{'...' if found != 'missing' else ''})")
    if wrong:
        raise CheckpointError(f"{label} does not match its preset.json: {'; '.join(wrong)}. Restore the files "
                              f"from the repository (git checkout -- {folder}), or rebuild them with: {meta.get('command')}")
