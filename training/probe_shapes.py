"""How much shape a trained preset's vision tower holds: a linear probe (its [CLS] state and mean
patch state, standardised; softmax regression) trained on single-shape scenes of the training seed
and scored on held-out ones. Chance is 1 in 6. A diagnostic for the training scripts (which tower
to share, whether a run needs a longer schedule or a tower that resolves shape), never run by the
tests or the demo.

    .venv/bin/python training/probe_shapes.py clip-shapes blip-vqa-shapes     # about 2 minutes
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_shapes import pixels  # noqa: E402
from common import PRESETS, start  # noqa: E402

from edgevfm.benchmarks.scenes import HELD_OUT_SEED, SHAPES, TRAIN_SEED, scenes  # noqa: E402


def vision_tower(name: str):
    """The vision tower of the preset folder ``name``: a CLIP or BLIP preset (ViTs with a [CLS]
    state; SAM's encoder has none)."""
    import json

    from transformers import AutoModel

    folder = PRESETS / name
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no preset folder {folder}: name one of {sorted(p.name for p in PRESETS.iterdir())}")
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    if not architecture.startswith(("Blip", "CLIP")):
        raise SystemExit(f"{name} is a {architecture}: the probe reads CLIP and BLIP towers only")
    if architecture.startswith("Blip"):
        import transformers

        return getattr(transformers, architecture).from_pretrained(folder).vision_model
    return AutoModel.from_pretrained(folder).vision_model


def features(vision, data, batch: int = 100) -> torch.Tensor:
    found = []
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            states = vision(pixel_values=pixels(np.stack([s.image for s in data[i:i + batch]])))[0]
            found.append(torch.cat([states[:, 0], states[:, 1:].mean(1)], 1))
    return torch.cat(found)


def probe(vision, train, test, steps: int = 500) -> float:
    x, x_test = features(vision, train), features(vision, test)
    y = torch.tensor([SHAPES.index(s.label) for s in train])
    y_test = torch.tensor([SHAPES.index(s.label) for s in test])
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    w = torch.zeros(x.shape[1], len(SHAPES), requires_grad=True)
    b = torch.zeros(len(SHAPES), requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-3 * (w ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(((x_test @ w + b).argmax(1) == y_test).float().mean())


def main(argv=None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or ["clip-shapes", "blip-vqa-shapes"]
    start(0)
    train = scenes(TRAIN_SEED, 1500, objects=(1, 1), start=3 * 10 ** 6)
    test = scenes(HELD_OUT_SEED, 300, objects=(1, 1))
    for name in names:
        print(f"{name}: shape by a linear probe of its vision tower, 300 held-out single-shape scenes: "
              f"{probe(vision_tower(name), train, test):.3f} (chance {1 / len(SHAPES):.3f})", flush=True)


if __name__ == "__main__":
    main()
