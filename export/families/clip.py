"""CLIP: two parts, ``vision`` (pixels -> projected image embeddings) and ``text`` (token ids ->
projected text embeddings), each with a dynamic batch (and sequence, for text)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..spec import FAMILIES, RESAMPLE_NAMES, FamilySpec, PartSpec, Preset, TensorSpec

_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]

_MERGES = 400  # about 1,000 tokens in all: every word of the corpus becomes one token


def clip_tokenizer(corpus: list[str] | None = None, max_merges: int = _MERGES):
    """A real CLIP tokenizer (transformers' CLIPTokenizer) with merges trained on ``corpus``
    (default :data:`..bpe.ENGLISH`) by the deterministic :func:`..bpe.train_merges`: the same
    tokenizer in every process."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    from ..bpe import ENGLISH, train_merges

    pipeline = CLIPTokenizer()._tokenizer
    words = []
    for line in ENGLISH if corpus is None else corpus:
        for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(pipeline.normalizer.normalize_str(line)):
            words.append(tuple(word[:-1]) + (word[-1] + "</w>",))
    merges = train_merges(words, max_merges=max_merges)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def check_tokenizer(tokenizer, source: str) -> None:
    """Refuse a tokenizer that cannot tell texts apart: transformers builds one silently from a
    folder that lacks the tokenizer files, and every label then gets the same ids."""
    from edgevfm.export.errors import CheckpointError

    a, b = (tokenizer(text)["input_ids"] for text in ("a photo of a cat", "a drawing of two dogs"))
    if a == b or len(tokenizer) < 10:
        raise CheckpointError(f"the tokenizer of {source!r} maps different texts to the same ids (its vocabulary has "
                              f"{len(tokenizer)} tokens): its tokenizer files are missing or broken; save the "
                              "tokenizer beside the model")


def _config(vision: dict, text: dict, projection_dim: int):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(text, max_position_embeddings=77),
        vision_config=dict(vision, image_size=224, patch_size=32),
        projection_dim=projection_dim,
    )


def processor_size(size) -> dict:
    """transformers' SizeDict (or a plain dict / int) as plain JSON data."""
    if isinstance(size, int):
        return {"shortest_edge": size}
    keys = ("shortest_edge", "longest_edge", "height", "width")
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    return {k: int(get(k)) for k in keys if get(k) is not None}


def clip_preprocessing(proc) -> dict:
    """A CLIPImageProcessor's steps as the manifest's ``preprocessing`` data (CLIP, LLaVA's tower)."""
    return {
        "resize": processor_size(proc.size), "crop": processor_size(proc.crop_size) if proc.do_center_crop else None,
        "interpolation": RESAMPLE_NAMES[int(proc.resample)],
        "rescale": float(proc.rescale_factor) if proc.do_rescale else 1.0,
        "mean": list(proc.image_mean) if proc.do_normalize else [0.0, 0.0, 0.0],
        "std": list(proc.image_std) if proc.do_normalize else [1.0, 1.0, 1.0],
        "convert_rgb": True,
    }


class VisionTower(nn.Module):
    """pixel_values (batch, 3, H, W) float32 -> image_embeds (batch, projection_dim), unnormalised.

    The embedding is the class token's: the last encoder layer runs its query, attention output
    and MLP for that token only (keys and values for all), the same numbers as the whole layer
    for the one row that is kept. On ViT-B/32 (50 tokens) that skips 7% of the tower's MatMul work
    in every precision and backend."""

    def __init__(self, model):
        super().__init__()
        self.vision_model, self.projection = model.vision_model, model.visual_projection

    def forward(self, pixel_values):
        vision = self.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        *layers, last = vision.encoder.layers
        for layer in layers:
            hidden = layer(hidden, None)
        return self.projection(vision.post_layernorm(_class_token_of_layer(last, hidden)))


def _class_token_of_layer(layer, hidden):
    """A CLIP encoder layer's output for token 0 only: (batch, tokens, width) -> (batch, width)."""
    attention, x = layer.self_attn, layer.layer_norm1(hidden)
    heads, head_dim = attention.num_heads, attention.head_dim

    def split(t):  # (batch, n, width) -> (batch, heads, n, head_dim)
        return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

    query, key, value = split(attention.q_proj(x[:, :1])), split(attention.k_proj(x)), split(attention.v_proj(x))
    weights = torch.softmax(query @ key.transpose(-1, -2) * attention.scale, dim=-1)
    mixed = (weights @ value).transpose(1, 2).reshape(x.shape[0], 1, heads * head_dim)
    token = hidden[:, :1] + attention.out_proj(mixed)
    token = token + layer.mlp(layer.layer_norm2(token))
    return token[:, 0]


class TextTower(nn.Module):
    """input_ids, attention_mask (batch, sequence) int64 -> text_embeds (batch, projection_dim)."""

    def __init__(self, model):
        super().__init__()
        self.text_model, self.projection = model.text_model, model.text_projection

    def forward(self, input_ids, attention_mask):
        return self.projection(self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


@FAMILIES.register("clip")
class ClipSpec(FamilySpec):
    name = "clip"
    model_types = ("clip",)
    required_files = (("tokenizer.json", "vocab.json"), ("preprocessor_config.json", "processor_config.json"))
    presets = {
        "clip-tiny": Preset("clip-tiny", "tiny CLIP for tests (seconds)",
                            {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                             "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                             "projection_dim": 16}, seed=0),
        "clip-vit-b32": Preset("clip-vit-b32", "openai/clip-vit-base-patch32 sizes, random weights",
                               {"vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                                "text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                                             vocab_size=49408),
                                "projection_dim": 512}, seed=0),
        "clip-shapes": Preset("clip-shapes", "small CLIP trained here on generated scenes (training/clip_shapes.py)",
                              {}, trained=True, folder="clip-shapes"),
    }

    def load_pretrained(self, source, revision):
        from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(source, revision=revision, attn_implementation="eager")
        tokenizer = CLIPTokenizer.from_pretrained(source, revision=revision)
        check_tokenizer(tokenizer, source)
        processor = CLIPImageProcessorPil.from_pretrained(source, revision=revision)
        return model, {"tokenizer": tokenizer, "image_processor": processor}

    def random_config(self, preset):
        tokenizer = clip_tokenizer()
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
        text = {"vocab_size": len(tokenizer), **preset.config["text"], **special}
        config = _config(preset.config["vision"], text, preset.config["projection_dim"])
        config._attn_implementation = "eager"
        return config, {"tokenizer": tokenizer}

    def build_random(self, preset):
        from transformers import CLIPImageProcessorPil, CLIPModel

        config, assets = self.random_config(preset)
        torch.manual_seed(preset.seed)
        return CLIPModel(config), dict(assets, image_processor=CLIPImageProcessorPil())

    def parts(self, checkpoint):
        config = checkpoint.model.config
        dim, size = config.projection_dim, config.vision_config.image_size
        vocab, eos = config.text_config.vocab_size, checkpoint.assets["tokenizer"].eos_token_id

        def pixels(batch, variant):
            generator = torch.Generator().manual_seed(variant)
            return {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}

        def tokens(batch, variant):
            generator = torch.Generator().manual_seed(variant)
            length = 7 if variant == 0 else 12
            ids = torch.randint(0, min(vocab, eos), (batch, length), generator=generator)
            mask = torch.ones(batch, length, dtype=torch.int64)
            for row in range(batch):  # rows of different lengths: end-of-text, then padding
                end = length - 1 - row * (variant != 0)
                ids[row, end] = eos
                ids[row, end + 1:] = eos
                mask[row, end + 1:] = 0
            return {"input_ids": ids, "attention_mask": mask}

        return [
            PartSpec("vision", VisionTower,
                     [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                     [TensorSpec("image_embeds", "float32", ("batch", dim))], pixels),
            PartSpec("text", TextTower,
                     [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                      TensorSpec("attention_mask", "int64", ("batch", "sequence"))],
                     [TensorSpec("text_embeds", "float32", ("batch", dim))], tokens),
        ]

    def manifest_sections(self, checkpoint):
        proc, tok = checkpoint.assets["image_processor"], checkpoint.assets["tokenizer"]
        max_length = min(int(tok.model_max_length), checkpoint.model.config.text_config.max_position_embeddings)
        return {
            "preprocessing": clip_preprocessing(proc),
            "tokenizer": {"file": "tokenizer.json", "max_length": max_length, "padding": "max_length",
                          "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                          "bos_token_id": tok.bos_token_id},
            "constants": {"logit_scale": float(checkpoint.model.logit_scale.exp().item())},
        }

    def write_assets(self, checkpoint, stage: Path):
        checkpoint.assets["tokenizer"].backend_tokenizer.save(str(stage / "tokenizer.json"))
