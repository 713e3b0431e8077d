"""Train ``trained:sam-shapes``: a small SAM (128 px input, patches of 8, a 4-layer ViT of width 96;
an image embedding, prompt encoder and mask decoder of 128 channels; 64 x 64 low-res masks) trained
on generated scenes to give each shape's mask from a point, two points, a box, a point and a box,
and again with its own previous mask as the mask prompt.

    .venv/bin/python training/sam_shapes.py     # 8,000 steps, ~80 min on 2 cores (loss.tsv has the times)

The shipped weights are that one run. A run may go on training an earlier one (``--continue-from
DIR``: its weights, checked against its preset.json, on a fresh cosine schedule); the preset then
records that folder's sha256 and the command that made it (preset.json's ``continued_from``).

The image encoder is trained with the rest, through ``model.vision_encoder``: transformers'
``SamModel.get_image_embeddings`` runs under ``torch.no_grad``, and the presets trained through it
(up to commit 418ef50) kept the tower as drawn, a random-feature encoder that only the prompt
encoder and decoder learnt to read (``tests/test_trained_presets.py`` now fails a preset with a
layer that never moved). The mask decoder's width (``--width``) was chosen on those runs: at 64
(8 channels per low-res pixel) their masks came out blurred at every shape's edge
(docs/trained-presets.md; ``training/sam_errors.py`` shows where a preset's masks miss).

As SAM is trained: the three multimask outputs learn the best of them (the lowest loss), output 0
every prompt, the IoU head the IoU each mask really has. The decoder is edgevfm's exported
``PromptDecoder`` (the same numbers as transformers', in the layout the bundle runs), so training
sees the prompts exactly as the runtime builds them (a padding point when there is no box).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LossLog, arguments, continued_from, cosine_lr, write_preset  # noqa: E402

from edgevfm.benchmarks.families.sam import centre_point as centre, tight_box as box  # noqa: E402
from edgevfm.benchmarks.scenes import TRAIN_SEED, scenes  # noqa: E402
from edgevfm.export.families.sam import PromptDecoder  # noqa: E402

SIZE, PATCH = 128, 8
MEAN, STD = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])


def build(width: int = 128):
    from transformers import SamConfig, SamImageProcessorPil, SamModel

    # scale: the random Fourier features' frequencies, 1 as SAM's PositionEmbeddingRandom draws them
    # (transformers defaults to hidden_size / 2, which a hub checkpoint's weights then replace: from
    # scratch, 48x the frequencies make every position look unlike its neighbours, and the decoder
    # learnt to ignore the prompts: mIoU 0.40 for points and boxes alike)
    vision = dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, image_size=SIZE, patch_size=PATCH,
                  output_channels=width, window_size=8, global_attn_indexes=[1, 3], num_pos_feats=width // 2, mlp_dim=384,
                  initializer_range=0.02, scale=1.0)
    config = SamConfig(vision_config=vision,
                       prompt_encoder_config=dict(hidden_size=width, image_size=SIZE, patch_size=PATCH, mask_input_channels=16),
                       mask_decoder_config=dict(hidden_size=width, mlp_dim=4 * width, num_attention_heads=4,
                                                iou_head_hidden_dim=width),
                       initializer_range=0.02)
    model = SamModel(config)
    # fixed, as in SAM: the exported decoder holds the image-wide embedding computed from it once
    model.shared_image_embedding.positional_embedding.requires_grad_(False)
    for module in (model.prompt_encoder, model.mask_decoder):  # fan-in init, as the random presets
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                layer.reset_parameters()
    low = 4 * SIZE // PATCH
    processor = SamImageProcessorPil(size={"longest_edge": SIZE}, pad_size={"height": SIZE, "width": SIZE},
                                     mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low})
    return model, processor


def pixels(images: np.ndarray) -> torch.Tensor:
    """(n, 128, 128, 3) uint8 -> the processor's normalised (n, 3, 128, 128) (no resize or padding
    at this size)."""
    return torch.from_numpy(((images.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def _point(rng, mask, inside=True):
    ys, xs = np.nonzero(mask if inside else ~mask)
    k = int(rng.integers(len(xs)))
    return [xs[k] + 0.5, ys[k] + 0.5]


def prompts(rng, mask) -> tuple[list, list]:
    """Two groups of prompts for one mask, as the runtime builds them: N = 2 (a point and SAM's
    padding point; a box) and N = 3 (two points and padding; a point and a box)."""
    point = centre(mask) if rng.random() < 0.3 else _point(rng, mask)
    b = np.float32(box(mask))
    jitter = rng.normal(0, 0.05 * max(b[2] - b[0], b[3] - b[1]), 4) if rng.random() < 0.5 else np.zeros(4)
    b = np.clip(b + jitter, 0, SIZE).tolist()
    if b[2] - b[0] < 1 or b[3] - b[1] < 1:
        b = box(mask)
    second = _point(rng, mask, inside=rng.random() < 0.5 or mask.all())
    second_label = 1.0 if mask[int(second[1]), int(second[0])] else 0.0
    two = ([point, b[:2], b[2:]], [1.0, 2.0, 3.0]) if rng.random() < 0.5 else ([point, second, [0, 0]], [1.0, second_label, -1.0])
    return [([point, [0, 0]], [1.0, -1.0]), ([b[:2], b[2:]], [2.0, 3.0])], [two]


def decode(decoder, embeddings, group, mask_input=None):
    """Every prompt of ``group`` [(coords, labels)] on its own image's ``embeddings`` (P, C, h, w):
    the exported decoder broadcasts one image over the prompts, and takes one image per prompt as well."""
    coords = torch.tensor([c for c, _ in group], dtype=torch.float32)
    labels = torch.tensor([lab for _, lab in group], dtype=torch.float32)
    n, low = len(group), 4 * embeddings.shape[-1]
    has = torch.zeros(n) if mask_input is None else torch.ones(n)
    mask_input = torch.zeros(n, 1, low, low) if mask_input is None else mask_input
    return decoder(embeddings, coords, labels, mask_input, has)


def mask_loss(logits, target):
    """(P, K, L, L) low-res logits against (P, H, W) targets -> (P, K) BCE + dice, and IoU (P, K)."""
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    t = target[:, None].expand_as(up)
    bce = F.binary_cross_entropy_with_logits(up, t, reduction="none").mean((-1, -2))
    p = torch.sigmoid(up)
    dice = 1 - (2 * (p * t).sum((-1, -2)) + 1) / (p.sum((-1, -2)) + t.sum((-1, -2)) + 1)
    hard = up > 0
    iou = (hard & (t > 0.5)).sum((-1, -2)).float() / ((hard | (t > 0.5)).sum((-1, -2)).float().clamp(min=1))
    return bce + dice, iou


def step_loss(decoder, embeddings, targets, firsts, seconds):
    """The batch's loss: the N = 2 prompts, again with their best mask as the mask prompt, and the
    N = 3 prompts; ``embeddings`` (B, C, h, w), ``targets`` (B, H, W), two and one prompts per image."""
    pairs = torch.arange(len(firsts)).repeat_interleave(2)
    group = [p for first in firsts for p in first]
    logits, scores = decode(decoder, embeddings[pairs], group)
    total = _group_loss(logits, scores, targets[pairs])
    best = logits[:, 1:].detach().gather(1, scores[:, 1:].detach().argmax(1)[:, None, None, None]
                                         .expand(-1, 1, *logits.shape[-2:]))
    logits, scores = decode(decoder, embeddings[pairs], group, mask_input=best)
    total = total + _group_loss(logits, scores, targets[pairs])
    logits, scores = decode(decoder, embeddings, [p for second in seconds for p in second])
    return total + _group_loss(logits, scores, targets)


def _group_loss(logits, scores, targets):
    loss, iou = mask_loss(logits, targets)
    return loss[:, 1:].min(1).values.mean() + loss[:, 0].mean() + F.mse_loss(scores, iou.detach())


def main(argv=None) -> None:
    def extra(parser):
        parser.add_argument("--width", type=int, default=128,
                            help="channels of the image embedding, the prompt encoder and the mask decoder")

    args = arguments(__doc__, argv, scenes=10000, steps=8000, batch=16, lr=8e-4, continues="sam-shapes",
                     continues_note=" (its width, not --width)", extra=extra)
    model, processor = build(args.width)
    history = {}
    if args.continue_from:
        from transformers import SamModel

        history = continued_from(args.continue_from)
        model = SamModel.from_pretrained(args.continue_from, dtype=torch.float32)
        model.shared_image_embedding.positional_embedding.requires_grad_(False)
        args.width = model.config.mask_decoder_config.hidden_size
    decoder = PromptDecoder(model)
    print(f"rendering {args.scenes} training scenes (seed {TRAIN_SEED}) ...", flush=True)
    data = scenes(TRAIN_SEED, args.scenes)
    rng = np.random.default_rng(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    log = LossLog(args.steps, "sam-shapes")
    model.train()
    for step in range(args.steps):
        batch = [data[i] for i in rng.choice(len(data), args.batch, replace=False)]
        lr = cosine_lr(step, args.steps, args.lr, warmup=150)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # the tower itself: SamModel.get_image_embeddings runs under torch.no_grad, and the image
        # encoder would never learn
        embeddings = model.vision_encoder(pixels(np.stack([s.image for s in batch])))[0]
        masks = [s.masks[int(rng.integers(len(s.masks)))] for s in batch]
        groups = [prompts(rng, mask) for mask in masks]
        targets = torch.from_numpy(np.stack(masks).astype(np.float32))
        loss = step_loss(decoder, embeddings, targets, [g[0] for g in groups], [g[1] for g in groups])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log.add(step, float(loss.detach()), lr)
    model.eval()
    point, boxed = evaluate(model, decoder)
    print(f"held-in mIoU: centre point {point:.3f}, box {boxed:.3f}")

    def save(folder: Path):
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    card = {"seed": args.seed, "train_seed": TRAIN_SEED, "scenes": args.scenes, "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "width": args.width, **history,
            "train_point_miou": round(point, 4), "train_box_miou": round(boxed, 4)}
    print("wrote", write_preset("sam-shapes", save, card, log.close(), args.out))


def evaluate(model, decoder, count: int = 100) -> tuple[float, float]:
    """mIoU of the best-scored multimask output for the centre point, and for the tight box, on
    training-split scenes past the ones trained on (a sanity figure; the benchmark's is held out)."""
    data = scenes(TRAIN_SEED, count, start=10 ** 6)
    ious = {"point": [], "box": []}
    with torch.inference_mode():
        embeddings = model.get_image_embeddings(pixels(np.stack([s.image for s in data])))
        for s, embedding in zip(data, embeddings):
            for mask in s.masks:
                group = [([centre(mask), [0, 0]], [1.0, -1.0]), ([box(mask)[:2], box(mask)[2:]], [2.0, 3.0])]
                logits, scores = decode(decoder, embedding[None].expand(2, -1, -1, -1), group)
                _, iou = mask_loss(logits, torch.from_numpy(mask.astype(np.float32))[None].expand(2, -1, -1))
                best = scores[:, 1:].argmax(1) + 1
                ious["point"].append(float(iou[0, best[0]]))
                ious["box"].append(float(iou[1, best[1]]))
    return float(np.mean(ious["point"])), float(np.mean(ious["box"]))


if __name__ == "__main__":
    main()
