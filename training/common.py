"""What every training script shares: the seed, threads, a progress bar with the loss, the loss log,
and writing a preset folder atomically with its sha256 and the command that rebuilt it.

The scripts are one-off runs (never run by ``make test`` or ``make demo``): their outputs are
committed under ``export/presets/<name>/`` and read as any ``save_pretrained`` folder is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

PRESETS = Path(__file__).resolve().parent.parent / "export" / "presets"
THREADS = 2  # the thread count changes float summation order: the recorded bytes hold for 2 threads


def arguments(doc: str, argv, scenes: int, steps: int, batch: int, lr: float, patch: int | None = None,
              vision_from: str | None = None, continues: str | None = None, continues_note: str = "", extra=None):
    """Every script's options (its defaults rebuild its preset), parsed; then :func:`start`.
    ``patch``: the script takes ``--patch`` (the vision tower's patch side), this its default;
    ``vision_from``: it takes ``--vision-from PRESET`` (a trained tower to start from), this preset
    its default; ``--vision-from none`` starts from random weights. ``continues``: the script takes
    ``--continue-from DIR``, a folder of this preset to go on training (see :func:`continued_from`),
    ``continues_note`` what the help adds. ``extra(parser)`` adds a script's own options."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    if patch is not None:
        parser.add_argument("--patch", type=int, default=patch, help="the vision tower's patch side in pixels")
    if vision_from:
        parser.add_argument("--vision-from", default=vision_from, metavar="PRESET",
                            type=lambda name: None if name.lower() == "none" else name,
                            help=f"start the vision tower from this trained preset's, by name or folder "
                                 f"(default {vision_from}; none: random)")
    if continues:
        parser.add_argument("--continue-from", type=Path, metavar="DIR",
                            help=f"a {continues} folder to go on training{continues_note}")
    parser.add_argument("--scenes", type=int, default=scenes)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"default: {PRESETS}/<name>")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    start(args.seed)
    return args


def start(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class LossLog:
    """A tqdm bar that shows the running loss, and ``loss.tsv`` (step, loss, lr, seconds)."""

    def __init__(self, steps: int, description: str):
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=description, unit="step", mininterval=2.0)
        self.rows: list[str] = ["step\tloss\tlr\tseconds"]
        self.started, self.running = time.time(), None

    def add(self, step: int, loss: float, lr: float, every: int = 25) -> None:
        self.running = loss if self.running is None else 0.95 * self.running + 0.05 * loss
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.running:.4f}", refresh=False)
        if step % every == 0:
            self.rows.append(f"{step}\t{self.running:.5f}\t{lr:.2e}\t{time.time() - self.started:.0f}")

    def close(self) -> str:
        self.bar.close()
        return "\n".join(self.rows) + "\n"


def preset_folder(name: str) -> Path:
    """A preset's folder by name (``export/presets/<name>``), or any folder a run wrote (``--out``):
    a script that starts from an earlier preset's weights can so start from the ones a preset
    recorded when the shipped folder has since been trained further."""
    return Path(name) if "/" in name or Path(name).is_absolute() else PRESETS / name


def continued_from(folder: Path) -> dict:
    """What a preset that goes on training an earlier run's folder records of it (the earlier
    command, its steps and its weights' sha256), once that folder's files are checked against its
    ``preset.json``: the pair of commands rebuilds the new preset."""
    from edgevfm.export.presets import check_files

    card = json.loads((folder / "preset.json").read_text())
    check_files(folder, card, str(folder))
    return {"continued_from": {"command": card["command"], "steps": card["steps"],
                               "sha256": card["sha256"]["model.safetensors"]}}


def write_preset(name: str, save, card: dict, loss_log: str, out: Path | None = None) -> Path:
    """Save a preset folder (``save(folder)`` writes the checkpoint files) through a temporary
    folder, then ``preset.json``: the command that rebuilt it, the seed and figures in ``card``, the
    versions, and every file's sha256 (:func:`edgevfm.export.presets.verify` checks them)."""
    out = out or PRESETS / name
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    save(stage)
    (stage / "loss.tsv").write_text(loss_log)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(stage.iterdir()) if p.is_file()}
    import transformers

    meta = {"name": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version(), "threads": THREADS},
            **card, "sha256": files}
    (stage / "preset.json").write_text(json.dumps(meta, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(stage, out)
    return out
