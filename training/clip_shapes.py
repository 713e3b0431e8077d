"""Train ``trained:clip-shapes``: a small CLIP (ViT 128 px, patches of 16, 4 layers of width 128;
a 3-layer text tower) trained contrastively on generated scenes and their captions.

The shipped weights are two runs, the second going on from the first (``--continue-from``: its
weights, checked against its preset.json, on a fresh cosine schedule; preset.json records the
first's command and sha256):

    .venv/bin/python training/clip_shapes.py --scenes 20000 --steps 4000     # ~35 min on 2 cores
    .venv/bin/python training/clip_shapes.py --continue-from export/presets/clip-shapes --steps 5000 \
        --seed 1 --lr 5e-4 --hard-share 0.75 --period-share 0.5               # ~50 min

Two things make the contrastive signal carry shape, not only colour. Part of each batch
(``--hard-share``, half by default) is single-shape scenes of two colours only, so that within it
only shape and size tell captions apart (hard negatives); and pairs whose captions are the same text
are all positives (a soft target spread over them), since a batch of generated scenes holds repeats
that plain CLIP loss would push apart. (With plain batches, colour alone solved most of each batch:
held-out shape top-1 0.65.) ``--period-share`` ends that share of captions with a period, as
written text and CLIP's prompts ("a photo of a circle.") do; a caption with and without it is the
same positive. The generated captions have none, and a model that never saw one read the period
as a word.

Training scenes come from :data:`edgevfm.benchmarks.scenes.TRAIN_SEED`; the benchmarks judge the
preset on :data:`~edgevfm.benchmarks.scenes.HELD_OUT_SEED`, which this script never reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LossLog, arguments, continued_from, cosine_lr, write_preset  # noqa: E402

from edgevfm.benchmarks.scenes import SHAPES, TRAIN_SEED, scenes, vocabulary  # noqa: E402
from edgevfm.export.bpe import ENGLISH  # noqa: E402
from edgevfm.export.families.clip import clip_tokenizer  # noqa: E402

SIZE, PATCH = 128, 16
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def build():
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = clip_tokenizer(ENGLISH + vocabulary(), max_merges=300)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(
        text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                         max_position_embeddings=77, vocab_size=len(tokenizer), **special),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=SIZE, patch_size=PATCH),
        projection_dim=64)
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    return CLIPModel(config), tokenizer, processor


def pixels(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 at the model's size -> normalised (n, 3, H, W): what the processor
    computes for a picture already at its size (resize and crop are then the identity)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def main(argv=None) -> None:
    def extra(parser):
        parser.add_argument("--hard-share", type=float, default=0.5,
                            help="the share of each batch that is single-shape scenes of two colours (hard negatives)")
        parser.add_argument("--period-share", type=float, default=0.0,
                            help="the share of captions given a closing period, as written text and prompts have")

    args = arguments(__doc__, argv, scenes=20000, steps=4000, batch=128, lr=1e-3, continues="clip-shapes",
                     continues_note=" (its tokenizer and sizes)", extra=extra)
    model, tokenizer, processor = build()
    history = {}
    if args.continue_from:
        from transformers import CLIPModel

        history = continued_from(args.continue_from)
        model = CLIPModel.from_pretrained(args.continue_from, dtype=torch.float32)
    if not (0 <= args.hard_share < 1 and 0 <= args.period_share <= 1):
        raise SystemExit(f"--hard-share must be in [0, 1) and --period-share in [0, 1], found {args.hard_share} "
                         f"and {args.period_share}")
    per_colour = round(args.batch * args.hard_share / 2)
    print(f"rendering {args.scenes} training scenes and as many single-shape ones (seed {TRAIN_SEED}) ...", flush=True)
    data = scenes(TRAIN_SEED, args.scenes)
    singles = scenes(TRAIN_SEED, args.scenes, objects=(1, 1), start=2 * 10 ** 6)
    images = np.stack([s.image for s in data + singles])
    texts = [s.captions for s in data + singles]
    by_colour: dict[str, list[int]] = {}
    for i, s in enumerate(singles):
        by_colour.setdefault(s.objects[0].colour, []).append(len(data) + i)
    colours = sorted(by_colour)
    rng = np.random.default_rng(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    log = LossLog(args.steps, "clip-shapes")
    model.train()
    for step in range(args.steps):
        two = rng.choice(len(colours), 2, replace=False)
        hard = np.concatenate([rng.choice(by_colour[colours[c]], per_colour, replace=False) for c in two])
        batch = np.concatenate([rng.choice(len(data), args.batch - len(hard), replace=False), hard])
        captions = [texts[i][int(rng.integers(len(texts[i])))] for i in batch]
        written = captions  # the same caption with or without its period is the same positive
        if args.period_share:
            written = [c + "." if rng.random() < args.period_share else c for c in captions]
        tokens = tokenizer(written, padding=True, return_tensors="pt")
        lr = cosine_lr(step, args.steps, args.lr, warmup=100)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=pixels(images[batch]))
        loss = contrastive(out.logits_per_image, captions)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        log.add(step, float(loss.detach()), lr)
    model.eval()
    accuracy = zero_shot(model, tokenizer)
    print(f"zero-shot top-1 on 300 held-in single-shape scenes: {accuracy:.3f}")

    def save(folder: Path):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)

    card = {"seed": args.seed, "train_seed": TRAIN_SEED, "scenes": args.scenes, "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "hard_share": args.hard_share,
            "period_share": args.period_share, **history,
            "train_zero_shot_top1": round(accuracy, 4)}
    print("wrote", write_preset("clip-shapes", save, card, log.close(), args.out))


def contrastive(logits: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """CLIP's symmetric cross-entropy, every pair whose captions are the same text a positive."""
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * torch.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * torch.log_softmax(logits.T, 1), 1).mean())


def zero_shot(model, tokenizer, count: int = 300) -> float:
    """Top-1 of "a photo of a {shape}." on single-shape training scenes (a sanity figure: the
    held-out one is the benchmark's)."""
    data = scenes(TRAIN_SEED, count, objects=(1, 1), start=10 ** 6)
    with torch.inference_mode():
        tokens = tokenizer([f"a photo of a {s}." for s in SHAPES], padding=True, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output
        image = model.get_image_features(pixel_values=pixels(np.stack([s.image for s in data]))).pooler_output
    guess = (torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T).argmax(1)
    return float(np.mean([SHAPES[int(g)] == s.label for g, s in zip(guess, data)]))


if __name__ == "__main__":
    main()
