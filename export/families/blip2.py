"""BLIP-2 with a decoder-only language model (OPT), from ``Blip2ForConditionalGeneration``.

Parts, driven by the runtime's generation engine like LLaVA's:
- ``vision``: pixels -> the language model's prefix embeddings (batch, query tokens, text hidden):
  the ViT, the Q-Former's learned queries cross-attending to it, and the language projection.
- ``embed`` and ``llm``: the OPT text model as :mod:`..llm` writes them. onnxruntime-genai's
  builder does not write OPT, so the graph is the plain one (``llm_graph="builder"`` is refused).

A prompt is ``num_query_tokens`` image tokens (their embeddings replaced by the ``vision`` output),
then BOS and the text, as transformers' Blip2Processor and ``generate`` build it.

The Flan-T5 (encoder-decoder) checkpoints are refused with a typed error: see the module's note
in the README (the engine's plain decoder takes per-generation constants, which is what an
encoder's cross-attention keys/values need, but the parts are not written yet).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..llm import llm_section, text_parts
from ..spec import FAMILIES, FamilySpec, PartSpec, Preset, TensorSpec
from .blip import LM_HEAD_STD, BlipSpec

IMAGE_TOKEN = "<image>"
PROMPT_CORPUS = """Question: what is in the picture? Answer: a cat sitting on a couch.
Question: how many people are there? Answer: two. Question: what colour is the car? Answer: red.
""".split("\n")


class PrefixEmbeddings(nn.Module):
    """pixel_values (batch, 3, S, S) -> image_features (batch, query tokens, text hidden)."""

    def __init__(self, model):
        super().__init__()
        self.vision, self.qformer = model.vision_model, model.qformer
        self.queries, self.projection = model.query_tokens, model.language_projection

    def forward(self, pixel_values):
        image = self.vision(pixel_values=pixel_values)[0]
        mask = torch.ones(image.shape[:2], dtype=torch.int64)
        queries = self.queries.expand(image.shape[0], -1, -1)
        states = self.qformer(query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=mask)[0]
        return self.projection(states)


def _opt(hidden: int, ffn: int, layers: int, heads: int, context: int, **extra) -> dict:
    # word_embed_proj_dim = hidden: the language projection writes hidden-size embeddings
    return dict(extra, model_type="opt", hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, word_embed_proj_dim=hidden, max_position_embeddings=context)


@FAMILIES.register("blip2")
class Blip2Spec(FamilySpec):
    name = "blip2"
    model_types = ("blip-2",)
    required_files = (("tokenizer.json", "vocab.json"), ("preprocessor_config.json",))
    presets = {
        "blip2-tiny": Preset("blip2-tiny", "tiny BLIP-2 (ViT, Q-Former, OPT) for tests",
                             {"vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=56, patch_size=14),
                              # std 0.1 at width 32: the image's pull on the queries is what std 0.02 gives
                              # at the real width 768 (at 0.02 here, two photos' features differ by 1e-3)
                              "qformer": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, initializer_range=0.1),
                              "text": _opt(64, 128, 2, 4, 128), "queries": 8}),
        "blip2-opt-350m": Preset("blip2-opt-350m", "BLIP-2's ViT-g/14 and Q-Former (32 queries) before an "
                                 "OPT-350m-sized language model (24 layers, hidden 1024, OPT's 50272-token vocabulary)",
                                 {"vision": dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                                 num_attention_heads=16, image_size=224, patch_size=14),
                                  "qformer": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                  num_attention_heads=12, cross_attention_frequency=2),
                                  "text": _opt(1024, 4096, 24, 16, 2048, vocab_size=50272,
                                               tie_word_embeddings=False),
                                  "queries": 32, "lm_head_std": LM_HEAD_STD}),
    }

    def load_pretrained(self, source, revision):
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration, BlipImageProcessorPil

        from edgevfm.runtime.errors import CheckpointError

        from .clip import check_tokenizer

        model = Blip2ForConditionalGeneration.from_pretrained(source, revision=revision, attn_implementation="eager",
                                                              dtype=torch.float32)
        if not model.config.use_decoder_only_language_model:
            raise CheckpointError(f"{source!r} has a {model.config.text_config.model_type} (encoder-decoder) language "
                                  "model: edgevfm exports BLIP-2 with a decoder-only language model (OPT) so far, "
                                  "e.g. Salesforce/blip2-opt-2.7b")
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        check_tokenizer(tokenizer, source)
        return model, {"tokenizer": tokenizer, "image_processor": BlipImageProcessorPil.from_pretrained(
            source, revision=revision)}

    def random_config(self, preset):
        from transformers import Blip2Config

        tokenizer = _tokenizer()
        text = dict(preset.config["text"])
        text.setdefault("vocab_size", len(tokenizer))
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
        vision = dict(preset.config["vision"], initializer_range=0.02)  # BLIP's default 1e-10 gives ~0 outputs
        qformer = dict(preset.config["qformer"], encoder_hidden_size=vision["hidden_size"])
        config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                             num_query_tokens=preset.config["queries"],
                             image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        config._attn_implementation = "eager"
        return config, {"tokenizer": tokenizer}

    def build_random(self, preset):
        from transformers import Blip2ForConditionalGeneration, BlipImageProcessorPil

        config, assets = self.random_config(preset)
        torch.manual_seed(preset.seed)
        model = Blip2ForConditionalGeneration(config)
        with torch.no_grad():  # the learned queries initialise at zero: give them a trained model's scale
            model.query_tokens.normal_(0.0, 0.02)
            if "lm_head_std" in preset.config:  # an untied head: logits as decisive as a trained model's
                model.language_model.lm_head.weight.normal_(0.0, preset.config["lm_head_std"])
        size = config.vision_config.image_size
        return model, dict(assets, image_processor=BlipImageProcessorPil(size={"height": size, "width": size}))

    def parts(self, checkpoint):
        from edgevfm.runtime.errors import ExportError

        config = checkpoint.model.config
        text, size = config.text_config, config.vision_config.image_size
        width = checkpoint.model.get_input_embeddings().embedding_dim
        if width != text.hidden_size:
            raise ExportError(f"the language model's embeddings are {width} wide and the language projection writes "
                              f"{text.hidden_size}: BLIP-2 needs them equal (OPT's word_embed_proj_dim = hidden_size)")
        if checkpoint.options.get("llm_graph") == "builder":
            from ..genai_builder import check_builder

            check_builder(text.model_type, text.hidden_size // text.num_attention_heads)

        def pixels(batch, variant):
            return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(variant))}

        lm = checkpoint.model.language_model
        vision = PartSpec("vision", PrefixEmbeddings, [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                          [TensorSpec("image_features", "float32", ("batch", config.num_query_tokens,
                                                                    text.hidden_size))], pixels, atol=1e-4)
        return [vision, *text_parts(checkpoint, text, lambda model: (lm.model, lm.lm_head), builder=False)]

    def manifest_sections(self, checkpoint):
        tok, config = checkpoint.assets["tokenizer"], checkpoint.model.config
        text = config.text_config
        return {
            "preprocessing": BlipSpec._preprocessing(checkpoint),
            "tokenizer": {"file": "tokenizer.json", "bos_token_id": int(tok.bos_token_id),
                          # whether the tokenizer starts a text with BOS (OPT's does), as the processor feeds it
                          "add_bos": bool(tok("a").input_ids[:1] == [tok.bos_token_id])},
            "prompt": {"image_token_id": int(config.image_token_id), "image_seq_length": int(config.num_query_tokens),
                       "stop_token_ids": [int(text.eos_token_id)], "question_template": "Question: {} Answer:"},
            "llm": llm_section(text),
        }

    def write_assets(self, checkpoint, stage: Path):
        checkpoint.assets["tokenizer"].backend_tokenizer.save(str(stage / "tokenizer.json"))


def _tokenizer():
    """OPT's tokenizer built offline: GPT-2's byte-level BPE with deterministic merges, OPT's special
    tokens (``</s>`` is BOS and EOS, added before every text) and ``<image>`` after the vocabulary."""
    from transformers import GPT2Tokenizer

    from ..bpe import ENGLISH, byte_level
    from .blip import CAPTION_CORPUS

    splitter = GPT2Tokenizer(vocab={"a": 0}, merges=[])._tokenizer.pre_tokenizer
    tokens, merges = byte_level(ENGLISH + CAPTION_CORPUS + PROMPT_CORPUS, splitter)
    vocab = list(dict.fromkeys(["<s>", "<pad>", "</s>", "<unk>"] + tokens))
    tokenizer = GPT2Tokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, bos_token="</s>",
                              eos_token="</s>", unk_token="<unk>", pad_token="<pad>", add_bos_token=True)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer
