"""Train ``trained:blip-shapes`` (captioning), ``trained:blip-vqa-shapes`` (question answering) and
``trained:blip-itm-shapes`` (image-text matching and contrast): BLIP's three checkpoint classes,
trained together on generated scenes as BLIP's pre-training trains its objectives together.

    .venv/bin/python training/blip_shapes.py --scenes 20000 --steps 3600     # ~35 min on 2 cores

The shipped presets started from the first of clip-shapes' two runs (their preset.json records its
sha256), before the second trained it further. To rebuild them, rebuild that run into a folder of
its own and start from it:

    .venv/bin/python training/clip_shapes.py --scenes 20000 --steps 4000 --out /tmp/clip-shapes-first
    .venv/bin/python training/blip_shapes.py --vision-from /tmp/clip-shapes-first

One vision tower (ViT 128 px, patches of 16, 4 layers of width 128), started from
``trained:clip-shapes``' (``--vision-from none``: from random weights), is shared by the three models,
and the VQA model's question encoder is the retrieval model's text encoder (BLIP initialises its
VQA encoder from the ITM one). Each step, on one batch of scenes:

- captioning: the scene's first (canonical) caption, teacher-forced after ``[DEC]``, as
  ``BlipForConditionalGeneration.generate`` starts;
- VQA: one of the scene's questions encoded against the image, its one-word answer decoded after
  ``[DEC]``, as ``BlipForQuestionAnswering.generate`` does;
- ITM: the image with one of its captions (a match) and with a caption that is false of it (half
  another scene's, half its own with one colour, shape, size or relation word changed: the hard
  negatives that make the head read the details);
- ITC: CLIP's symmetric loss between the projected ``[CLS]`` features, captions that are the same
  text all positives.

Texts are tokenized ``[CLS] text [SEP]`` as the runtime encodes them. Training scenes come from
:data:`edgevfm.benchmarks.scenes.TRAIN_SEED`; the benchmarks judge the presets on
:data:`~edgevfm.benchmarks.scenes.HELD_OUT_SEED`, which this script never reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_shapes import pixels  # noqa: E402
from common import LossLog, arguments, cosine_lr, write_preset  # noqa: E402

from edgevfm.benchmarks.scenes import COLOURS, SHAPES, SIZES, TRAIN_SEED, scenes, vocabulary  # noqa: E402
from edgevfm.export.families.blip import blip_tokenizer  # noqa: E402

SIZE, PATCH = 128, 16
TEMPERATURE = 0.07  # ITC's
# word -> the words that may replace it in a false caption
SWAPS = {w: [o for o in group if o != w] for group in (SHAPES, tuple(COLOURS), tuple(SIZES), ("left", "right"),
                                                         ("above", "below")) for w in group}
NAMES = {"caption": "blip-shapes", "vqa": "blip-vqa-shapes", "retrieval": "blip-itm-shapes"}


def build(patch: int = PATCH, vision_from: str | None = None):
    """The three models, their shared modules tied, and the tokenizer and processor they share.
    ``vision_from``: a trained CLIP preset whose vision tower starts the shared one."""
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval,
                              BlipForQuestionAnswering, BlipImageProcessorPil)

    tokenizer = blip_tokenizer(vocabulary())
    text = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=64, vocab_size=len(tokenizer), encoder_hidden_size=128,
                bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"), sep_token_id=tokenizer.sep_token_id,
                eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  image_size=SIZE, patch_size=patch, initializer_range=0.02)
    if vision_from:
        vision["hidden_act"] = "quick_gelu"  # CLIP's
    config = BlipConfig(vision_config=vision, text_config=text, image_text_hidden_size=64)
    config._attn_implementation = "eager"
    caption = BlipForConditionalGeneration(config)
    vqa = BlipForQuestionAnswering(config)
    itm = BlipForImageTextRetrieval(config)
    vqa.vision_model = itm.vision_model = caption.vision_model
    itm.text_encoder = vqa.text_encoder
    if vision_from:
        clip_vision_into_blip(caption.vision_model, vision_from)
    processor = BlipImageProcessorPil(size={"height": SIZE, "width": SIZE})
    return {"caption": caption, "vqa": vqa, "retrieval": itm}, tokenizer, processor


def vision_sha256(preset: str | None) -> str | None:
    """The sha256 of the weights the tower started from (``preset``: a preset's name or a folder): a
    rebuild gives the same bytes only from these (see the module's docstring for the shipped ones)."""
    if not preset:
        return None
    from common import preset_folder

    return json.loads((preset_folder(preset) / "preset.json").read_text())["sha256"]["model.safetensors"]


def clip_vision_into_blip(blip, preset: str) -> None:
    """Copy the vision tower of the trained CLIP ``preset`` into ``blip`` (a ``BlipVisionModel`` of
    the same sizes): q, k, v into BLIP's fused ``qkv`` (rows q, k, v), ``out_proj`` into
    ``projection``, the patch convolution with a zero bias. CLIP normalises the embeddings
    (``pre_layrnorm``) where BLIP does not: training goes on through that difference."""
    from transformers import CLIPModel

    from common import preset_folder

    clip = CLIPModel.from_pretrained(preset_folder(preset)).vision_model
    with torch.no_grad():
        ours, theirs = blip.embeddings, clip.embeddings
        ours.class_embedding.copy_(theirs.class_embedding.view_as(ours.class_embedding))
        ours.position_embedding.copy_(theirs.position_embedding.weight[None])
        ours.patch_embedding.weight.copy_(theirs.patch_embedding.weight)
        ours.patch_embedding.bias.zero_()
        for mine, clips in zip(blip.encoder.layers, clip.encoder.layers):
            attention = clips.self_attn
            mine.self_attn.qkv.weight.copy_(torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                                       attention.v_proj.weight]))
            mine.self_attn.qkv.bias.copy_(torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias]))
            mine.self_attn.projection.load_state_dict(attention.out_proj.state_dict())
            for name in ("layer_norm1", "layer_norm2", "mlp"):
                getattr(mine, name).load_state_dict(getattr(clips, name).state_dict())
        blip.post_layernorm.load_state_dict(clip.post_layernorm.state_dict())


def false_caption(caption: str, others: list[str], rng: np.random.Generator) -> str:
    """A caption false of the scene ``caption`` describes: another scene's, or this one with one
    word changed."""
    words = caption.split()
    swappable = [i for i, w in enumerate(words) if w.strip(",:") in SWAPS]
    if rng.random() < 0.5 and swappable:
        i = swappable[int(rng.integers(len(swappable)))]
        word = words[i].strip(",:")
        words[i] = words[i].replace(word, SWAPS[word][int(rng.integers(len(SWAPS[word])))])
        return " ".join(words)
    return others[int(rng.integers(len(others)))]


def decoder_loss(decoder, ids, mask, states, states_mask=None) -> torch.Tensor:
    """Next-token cross-entropy of ``[DEC] text [SEP]`` (``ids`` start with ``[CLS]``, replaced
    by ``[DEC]`` as BLIP's forward does), padding excluded."""
    ids = ids.clone()
    ids[:, 0] = decoder.config.bos_token_id
    logits = decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=states,
                     encoder_attention_mask=states_mask).logits
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


def step_loss(models, tokenizer, images, scenes_, rng) -> tuple[torch.Tensor, dict]:
    caption, vqa, itm = models["caption"], models["vqa"], models["retrieval"]
    embeds = caption.vision_model(pixel_values=pixels(images))[0]
    n = len(scenes_)

    def tokens(texts):
        found = tokenizer(texts, padding=True, return_tensors="pt")
        return found["input_ids"], found["attention_mask"]

    # captioning: the canonical caption
    ids, mask = tokens([s.captions[0] for s in scenes_])
    losses = {"caption": decoder_loss(caption.text_decoder, ids, mask, embeds)}
    # VQA: one question per scene
    asked = [s.questions[int(rng.integers(len(s.questions)))] for s in scenes_]
    q_ids, q_mask = tokens([q for q, _, _ in asked])
    question = vqa.text_encoder(input_ids=q_ids, attention_mask=q_mask, encoder_hidden_states=embeds)[0]
    a_ids, a_mask = tokens([a for _, a, _ in asked])
    losses["vqa"] = decoder_loss(vqa.text_decoder, a_ids, a_mask, question, q_mask)
    # ITM: each image with a true caption and a false one
    true = [s.captions[int(rng.integers(len(s.captions)))] for s in scenes_]
    false = [false_caption(s.captions[0], [o.captions[0] for o in scenes_ if o.captions[0] not in s.captions], rng)
             for s in scenes_]
    m_ids, m_mask = tokens(true + false)
    matched = itm.text_encoder(input_ids=m_ids, attention_mask=m_mask,
                               encoder_hidden_states=torch.cat([embeds, embeds]))[0][:, 0]
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).long()
    losses["itm"] = F.cross_entropy(itm.itm_head(matched), labels)
    # ITC: the true captions against the images
    t_ids, t_mask = tokens(true)
    text = F.normalize(itm.text_proj(itm.text_encoder(input_ids=t_ids, attention_mask=t_mask)[0][:, 0]), dim=-1)
    image = F.normalize(itm.vision_proj(embeds[:, 0]), dim=-1)
    logits = image @ text.T / TEMPERATURE
    same = torch.tensor([[set(a.captions) == set(b.captions) for b in scenes_] for a in scenes_], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    losses["itc"] = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                           + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
    return sum(losses.values()), {k: float(v.detach()) for k, v in losses.items()}


def main(argv=None) -> None:
    args = arguments(__doc__, argv, scenes=20000, steps=3600, batch=64, lr=5e-4, patch=PATCH, vision_from="clip-shapes")
    models, tokenizer, processor = build(args.patch, args.vision_from)
    print(f"rendering {args.scenes} training scenes (seed {TRAIN_SEED}) ...", flush=True)
    data = scenes(TRAIN_SEED, args.scenes)
    images = np.stack([s.image for s in data])
    parameters = list({id(p): p for m in models.values() for p in m.parameters()}.values())
    print(f"{sum(p.numel() for p in parameters) / 1e6:.1f} M parameters", flush=True)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.05)
    rng = np.random.default_rng(args.seed)
    log = LossLog(args.steps, "blip-shapes")
    for m in models.values():
        m.train()
    parts = {}
    for step in range(args.steps):
        batch = rng.choice(len(data), args.batch, replace=False)
        lr = cosine_lr(step, args.steps, args.lr, warmup=150)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts = step_loss(models, tokenizer, images[batch], [data[i] for i in batch], rng)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        log.add(step, float(loss.detach()), lr)
        if step % 250 == 0:
            print(" ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
    for m in models.values():
        m.eval()
    figures = held_in(models, tokenizer)
    print("held-in training-seed scenes:", figures)
    loss_log = log.close()
    for task, model in models.items():
        def save(folder: Path, model=model):
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            processor.save_pretrained(folder)

        card = {"seed": args.seed, "train_seed": TRAIN_SEED, "scenes": args.scenes, "steps": args.steps,
                "patch": args.patch, "vision_from": args.vision_from,
                "vision_from_sha256": vision_sha256(args.vision_from), "batch": args.batch, "lr": args.lr, "trained_with": sorted(NAMES.values()),
                "train_figures": figures, "last_losses": {k: round(v, 4) for k, v in parts.items()}}
        print("wrote", write_preset(NAMES[task], save, card, loss_log,
                                    args.out / NAMES[task] if args.out else None))


def held_in(models, tokenizer, count: int = 200) -> dict:
    """Sanity figures on scenes of the training seed the steps did not draw from (the held-out
    ones are the benchmarks'): caption exact match, VQA answer accuracy, ITM accuracy."""
    data = scenes(TRAIN_SEED, count, start=10 ** 6)
    rng = np.random.default_rng(1)
    x = pixels(np.stack([s.image for s in data]))
    with torch.inference_mode():
        said = models["caption"].generate(pixel_values=x, max_new_tokens=30)
        captions = tokenizer.batch_decode(said, skip_special_tokens=True)
        right = [s.questions[int(rng.integers(len(s.questions)))] for s in data]
        answers = []
        for s, (q, _, _) in zip(data, right):
            found = tokenizer(q, return_tensors="pt", return_token_type_ids=False)
            out = models["vqa"].generate(pixel_values=pixels(s.image[None]), **found, max_new_tokens=4)
            answers.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
        others = [s.captions[0] for s in data]
        pairs = [(s, s.captions[0], 1) for s in data] + [(s, others[(i + 7) % count], 0) for i, s in enumerate(data)]
        itm = []
        for s, text, label in pairs:
            found = tokenizer(text, return_tensors="pt", return_token_type_ids=False)
            score = models["retrieval"](pixel_values=pixels(s.image[None]), **found).itm_score
            itm.append(int(score.argmax(-1)) == label)
    return {"caption_exact": round(float(np.mean([c.strip() == s.captions[0] for c, s in zip(captions, data)])), 4),
            "vqa_accuracy": round(float(np.mean([a == t for a, (_, t, _) in zip(answers, right)])), 4),
            "vqa_shape_accuracy": round(float(np.mean([a == t for a, (_, t, k) in zip(answers, right) if k == "shape"])), 4),
            "itm_accuracy": round(float(np.mean(itm)), 4)}


if __name__ == "__main__":
    main()
