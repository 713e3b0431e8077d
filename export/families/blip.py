"""BLIP captioning (work in progress: captioning only; VQA, ITM/ITC still to come).

Parts, from ``BlipForConditionalGeneration``:
- ``vision``: pixels -> image_embeds (batch, 1 + patches, vision hidden).
- ``cross_kv``: image_embeds -> every decoder layer's cross-attention keys and values, computed once
  per image (not per token): ``cross_key.i`` / ``cross_value.i`` (batch, heads, patches + 1, head dim).
- ``text_decoder``: input_ids, attention_mask, position_ids, the self-attention cache (``past_key.i``
  -> ``present_key.i``, present = past + new) and the cross keys/values -> logits. The runtime's
  generation engine drives it like any plain decoder (ids in, not embeddings; the cross keys and
  values ride in its cache as constants, so beam search reorders them too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..llm import given_caches, past_feeds, self_attention_presents, step_shape
from ..spec import FAMILIES, RESAMPLE_NAMES, FamilySpec, PartSpec, Preset, TensorSpec
from .clip import processor_size

CAPTION_CORPUS = """a photo of a cat sitting on a couch. a dog running in the grass. a man riding a horse.
an astronaut in a space suit. a cup of coffee on a wooden table. a rocket on the launch pad.
two people standing next to a car. a plate of food with a fork. a black and white photo of a street.
""".split("\n")


class VisionEncoder(nn.Module):
    """pixel_values (batch, 3, S, S) -> image_embeds (batch, tokens, vision hidden)."""

    def __init__(self, model):
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values):
        return self.vision(pixel_values=pixel_values)[0]


class QuestionEncoder(nn.Module):
    """VQA: input_ids, attention_mask (batch, question) and image_embeds -> question_embeds
    (batch, question, text hidden): the text encoder attending to the image."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, input_ids, attention_mask, image_embeds):
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.int64)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                            encoder_attention_mask=image_mask)[0]


class MatchHead(nn.Module):
    """ITM: input_ids, attention_mask (batch, text) and image_embeds -> itm_logits (batch, 2)
    (no match, match): the text encoder attending to the image, its [CLS] state through the head."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.head = QuestionEncoder(model), model.itm_head

    def forward(self, input_ids, attention_mask, image_embeds):
        return self.head(self.encoder(input_ids, attention_mask, image_embeds)[:, 0])


class ImageFeature(nn.Module):
    """ITC: image_embeds -> image_feat (batch, projection), unit length."""

    def __init__(self, model):
        super().__init__()
        self.proj = model.vision_proj

    def forward(self, image_embeds):
        return nn.functional.normalize(self.proj(image_embeds[:, 0]), dim=-1)


class TextFeature(nn.Module):
    """ITC: input_ids, attention_mask -> text_feat (batch, projection), unit length (no image)."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.proj = model.text_encoder, model.text_proj

    def forward(self, input_ids, attention_mask):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return nn.functional.normalize(self.proj(states[:, 0]), dim=-1)


class CrossKeysValues(nn.Module):
    """image_embeds -> cross_key.i, cross_value.i of every decoder layer (batch, heads, tokens, head dim)."""

    def __init__(self, model):
        super().__init__()
        self.layers = model.text_decoder.bert.encoder.layer

    def forward(self, image_embeds):
        out = []
        for layer in self.layers:
            attention = layer.crossattention.self
            shape = (*image_embeds.shape[:-1], -1, attention.attention_head_size)
            out += [attention.key(image_embeds).view(shape).transpose(1, 2),
                    attention.value(image_embeds).view(shape).transpose(1, 2)]
        return tuple(out)


class TextDecoderStep(nn.Module):
    """One decoder call: input_ids (batch, sequence), attention_mask (batch, past + sequence),
    position_ids (batch, sequence), past_key.i / past_value.i, then cross_key.i / cross_value.i ->
    logits (batch, sequence, vocab), present_key.i / present_value.i."""

    def __init__(self, model):
        super().__init__()
        self.decoder, self.layers = model.text_decoder, model.config.text_config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *caches):
        key = caches[2 * self.layers]
        # the cross-attention branch is taken when encoder states are given; their values are unused
        states = key.new_zeros(key.shape[0], key.shape[2], 1)
        mask = torch.ones(key.shape[0], key.shape[2], dtype=torch.int64)
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           encoder_hidden_states=states, encoder_attention_mask=mask,
                           cache=given_caches(caches, self.layers), use_cache=True)
        return (out.logits, *self_attention_presents(out.cache))


# Real-size random presets: the LM head at this std gives logits of std ~4 over a hidden state of
# width ~800, so the FP32 top-1 is as decisive as a trained model's (init 0.02 leaves every
# position near-tied, and no position to judge quantization by; each report prints the FP32 top-1
# margin beside its agreement figures)
LM_HEAD_STD = 0.15


def _vision(size: int, patch: int, **sizes) -> dict:
    # BLIP's vision config initialises weights at std 1e-10 (fine-tuned checkpoints overwrite them):
    # random presets need a real scale, or every output is ~0
    return dict(sizes, image_size=size, patch_size=patch, initializer_range=0.02)


@FAMILIES.register("blip")
class BlipSpec(FamilySpec):
    name = "blip"
    model_types = ("blip",)
    required_files = (("tokenizer.json", "vocab.txt"), ("preprocessor_config.json", "processor_config.json"))
    presets = {
        "blip-tiny": Preset("blip-tiny", "tiny BLIP captioner for tests",
                            {"vision": _vision(64, 16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2),
                             "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, max_position_embeddings=64)}),
        "blip-vqa-tiny": Preset("blip-vqa-tiny", "tiny BLIP question answerer for tests",
                                {"vision": _vision(64, 16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2),
                                 "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, max_position_embeddings=64), "task": "vqa"}),
        "blip-itm-tiny": Preset("blip-itm-tiny", "tiny BLIP image-text matcher (ITM and ITC heads) for tests",
                                {"vision": _vision(64, 16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=2),
                                 "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, max_position_embeddings=64),
                                 "task": "retrieval", "projection": 16}),
        "blip-base": Preset("blip-base", "BLIP base sizes: ViT-B/16 at 384 px, BERT-base text decoder",
                            {"vision": _vision(384, 16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                               num_attention_heads=12),
                             "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=512),
                             "lm_head_std": LM_HEAD_STD}),
    }

    def load_pretrained(self, source, revision):
        from transformers import AutoConfig, AutoTokenizer, BlipImageProcessorPil

        from edgevfm.runtime.errors import CheckpointError

        from .clip import check_tokenizer

        architecture = (AutoConfig.from_pretrained(source, revision=revision).architectures or [None])[0]
        if architecture not in TASKS:
            raise CheckpointError(f"{source!r} is a {architecture}: edgevfm exports BLIP as one of "
                                  f"{', '.join(TASKS)}")
        model = _model_class(TASKS[architecture]).from_pretrained(source, revision=revision,
                                                                  attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        check_tokenizer(tokenizer, source)
        processor = BlipImageProcessorPil.from_pretrained(source, revision=revision)
        return model, {"tokenizer": tokenizer, "image_processor": processor}

    def random_config(self, preset):
        from transformers import BlipConfig

        tokenizer = _tokenizer()
        text = dict(preset.config["text"], vocab_size=len(tokenizer), encoder_hidden_size=preset.config["vision"][
            "hidden_size"], bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
            sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
        config = BlipConfig(vision_config=preset.config["vision"], text_config=text,
                            image_text_hidden_size=preset.config.get("projection", 256))
        config._attn_implementation = "eager"
        return config, {"tokenizer": tokenizer}

    def build_random(self, preset):
        from transformers import BlipImageProcessorPil

        config, assets = self.random_config(preset)
        torch.manual_seed(preset.seed)
        model = _model_class(preset.config.get("task", "caption"))(config)
        if "lm_head_std" in preset.config:
            with torch.no_grad():  # tied to the LM head; the embeddings' LayerNorm keeps the scale to the logits
                model.text_decoder.bert.embeddings.word_embeddings.weight.normal_(0.0, preset.config["lm_head_std"])
        size = config.vision_config.image_size
        return model, dict(assets, image_processor=BlipImageProcessorPil(size={"height": size, "width": size}))

    def parts(self, checkpoint):
        config = checkpoint.model.config
        text, vision = config.text_config, config.vision_config
        size, layers, heads = vision.image_size, text.num_hidden_layers, text.num_attention_heads
        head_dim, vocab = text.hidden_size // heads, text.vocab_size
        tokens = (size // vision.patch_size) ** 2 + 1
        vqa = task_of(checkpoint.model) == "vqa"
        # the decoder cross-attends to the image (captions) or to the question's states (VQA)
        encoder = "question" if vqa else tokens

        def pixels(batch, variant):
            return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(variant))}

        def embeds(batch, variant):
            with torch.no_grad():
                return {"image_embeds": VisionEncoder(checkpoint.model)(pixels(batch, variant)["pixel_values"])}

        def step(batch, variant):
            past, length, mask, g = step_shape(batch, variant)
            feeds = {"input_ids": torch.randint(0, vocab, (batch, length), generator=g), "attention_mask": mask,
                     "position_ids": (mask.cumsum(1) - 1).clamp(min=0)[:, past:]}
            feeds |= past_feeds(batch, past, layers, heads, head_dim, g)
            with torch.no_grad():
                states = embeds(batch, variant)["image_embeds"]
                if vqa:
                    states = QuestionEncoder(checkpoint.model)(**question(batch, variant))
                cross = CrossKeysValues(checkpoint.model)(states)
            for i in range(layers):
                feeds[f"cross_key.{i}"], feeds[f"cross_value.{i}"] = cross[2 * i], cross[2 * i + 1]
            return feeds

        def question(batch, variant):
            length = 5 if variant == 0 else 8
            g = torch.Generator().manual_seed(variant + 10)
            mask = torch.ones(batch, length, dtype=torch.int64)
            if variant == 1:
                mask[0, -3:] = 0  # a shorter question, right-padded as the tokenizer pads
            return {"input_ids": torch.randint(0, vocab, (batch, length), generator=g), "attention_mask": mask,
                    "image_embeds": embeds(batch, variant)["image_embeds"]}

        def question_states(batch, variant):
            with torch.no_grad():
                return {"question_embeds": QuestionEncoder(checkpoint.model)(**question(batch, variant))}

        def kv(prefix, length):
            return [TensorSpec(f"{prefix}_{kv}.{i}", "float32", ("batch", heads, length, head_dim))
                    for i in range(layers) for kv in ("key", "value")]

        cross = kv("cross", encoder)
        image = TensorSpec("image_embeds", "float32", ("batch", tokens, vision.hidden_size))
        parts = [PartSpec("vision", VisionEncoder, [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                          [image], pixels)]
        if task_of(checkpoint.model) == "retrieval":
            text_in = [TensorSpec("input_ids", "int64", ("batch", "text")),
                       TensorSpec("attention_mask", "int64", ("batch", "text"))]
            projection = checkpoint.model.config.image_text_hidden_size

            def texts(batch, variant):
                found = question(batch, variant)
                return {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}

            return parts + [
                PartSpec("itm", MatchHead, text_in + [image], [TensorSpec("itm_logits", "float32", ("batch", 2))],
                         question),
                PartSpec("image_proj", ImageFeature, [image],
                         [TensorSpec("image_feat", "float32", ("batch", projection))], embeds),
                PartSpec("text_proj", TextFeature, text_in,
                         [TensorSpec("text_feat", "float32", ("batch", projection))], texts),
            ]
        if vqa:
            states = TensorSpec("question_embeds", "float32", ("batch", "question", text.hidden_size))
            parts += [PartSpec("question", QuestionEncoder, [TensorSpec("input_ids", "int64", ("batch", "question")),
                                                             TensorSpec("attention_mask", "int64", ("batch", "question")),
                                                             image], [states], question),
                      PartSpec("cross_kv", CrossKeysValues, [states], cross, question_states)]
        else:
            parts.append(PartSpec("cross_kv", CrossKeysValues, [image], cross, embeds))
        return parts + [
            PartSpec("text_decoder", TextDecoderStep,
                     [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                      TensorSpec("attention_mask", "int64", ("batch", "total")),
                      TensorSpec("position_ids", "int64", ("batch", "sequence"))] + kv("past", "past") + cross,
                     [TensorSpec("logits", "float32", ("batch", "sequence", vocab))] + kv("present", "total"), step,
                     check_variants=(1, 2)),
        ]

    def manifest_sections(self, checkpoint):
        text = checkpoint.model.config.text_config
        if task_of(checkpoint.model) == "retrieval":
            return {"task": "retrieval", "preprocessing": blip_preprocessing(checkpoint), "tokenizer":
                    {"file": "tokenizer.json"}, "text": {"context_length": text.max_position_embeddings}}
        return {
            "task": task_of(checkpoint.model),
            "preprocessing": blip_preprocessing(checkpoint),
            "tokenizer": {"file": "tokenizer.json"},
            "text": {"num_layers": text.num_hidden_layers, "heads": text.num_attention_heads,
                     "head_dim": text.hidden_size // text.num_attention_heads, "vocab_size": text.vocab_size,
                     "context_length": text.max_position_embeddings, "bos_token_id": int(text.bos_token_id),
                     "sep_token_id": int(text.sep_token_id), "pad_token_id": int(text.pad_token_id)},
        }

    def write_assets(self, checkpoint, stage: Path):
        checkpoint.assets["tokenizer"].backend_tokenizer.save(str(stage / "tokenizer.json"))


TASKS = {"BlipForConditionalGeneration": "caption", "BlipForQuestionAnswering": "vqa",
         "BlipForImageTextRetrieval": "retrieval"}


def _model_class(task: str):
    import transformers

    return getattr(transformers, next(name for name, t in TASKS.items() if t == task))


def task_of(model) -> str:
    return TASKS[type(model).__name__]


def _tokenizer():
    """A WordPiece tokenizer built offline (lower case, BERT's special tokens) with BLIP's
    ``[DEC]`` (the decoder's start token) and ``[ENC]`` added after the vocabulary."""
    from transformers import BertTokenizer

    from ..bpe import ENGLISH

    words = sorted({w.strip(".,?!") for line in ENGLISH + CAPTION_CORPUS for w in line.lower().split()} - {""})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!"] + chars + [f"##{c}" for c in chars]
    vocab += [w for w in words if w not in vocab]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_tokens(["[DEC]", "[ENC]"], special_tokens=True)
    tokenizer.bos_token = "[DEC]"
    return tokenizer


def blip_preprocessing(checkpoint) -> dict:
    """BLIP's (and BLIP-2's) image processor as the manifest's preprocessing."""
    proc = checkpoint.assets["image_processor"]
    return {"resize": processor_size(proc.size), "interpolation": RESAMPLE_NAMES[int(proc.resample)],
            "rescale": float(proc.rescale_factor) if proc.do_rescale else 1.0,
            "mean": list(proc.image_mean) if proc.do_normalize else [0.0, 0.0, 0.0],
            "std": list(proc.image_std) if proc.do_normalize else [1.0, 1.0, 1.0], "convert_rgb": True}
