"""BLIP: what every task's export shares (the ``vision`` part, loading, presets, the tokenizer, the
preprocessing) and, in a file of each task's own, the task's parts and manifest sections:
captioning (:mod:`.blip_caption`, from ``BlipForConditionalGeneration``), visual question answering
(:mod:`.blip_vqa`, ``BlipForQuestionAnswering``) and image-text retrieval (:mod:`.blip_retrieval`,
``BlipForImageTextRetrieval``). The checkpoint's class says which.

- ``vision``: pixels -> image_embeds (batch, 1 + patches, vision hidden), every task's first part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

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


@dataclass(frozen=True)
class Shapes:
    """A BLIP checkpoint's sizes, and the example feeds every task's parts start from."""

    model: nn.Module
    size: int  # the input image's side
    tokens: int  # image tokens: patches + [CLS]
    layers: int  # text decoder layers
    heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model) -> "Shapes":
        text, vision = model.config.text_config, model.config.vision_config
        return cls(model, vision.image_size, (vision.image_size // vision.patch_size) ** 2 + 1, text.num_hidden_layers,
                   text.num_attention_heads, text.hidden_size // text.num_attention_heads, text.vocab_size)

    def image(self) -> TensorSpec:
        return TensorSpec("image_embeds", "float32", ("batch", self.tokens, self.model.config.vision_config.hidden_size))

    def pixels(self, batch, variant):
        return {"pixel_values": torch.randn(batch, 3, self.size, self.size,
                                            generator=torch.Generator().manual_seed(variant))}

    def embeds(self, batch, variant):
        with torch.no_grad():
            return {"image_embeds": VisionEncoder(self.model)(self.pixels(batch, variant)["pixel_values"])}

    def question(self, batch, variant):
        """A text (a question, or a caption to match) with the image's embeddings."""
        length = 5 if variant == 0 else 8
        g = torch.Generator().manual_seed(variant + 10)
        mask = torch.ones(batch, length, dtype=torch.int64)
        if variant == 1:
            mask[0, -3:] = 0  # a shorter question, right-padded as the tokenizer pads
        return {"input_ids": torch.randint(0, self.vocab, (batch, length), generator=g), "attention_mask": mask,
                "image_embeds": self.embeds(batch, variant)["image_embeds"]}


@dataclass(frozen=True)
class TaskExport:
    """One task's parts after ``vision`` and its manifest ``text`` section."""

    parts: Callable[[Shapes], list[PartSpec]]
    text: Callable[[object], dict]  # (the checkpoint's text config) -> the manifest's text section


# {task: its export}, filled by the task files
TASK_EXPORTS: dict[str, TaskExport] = {}


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
        "blip-shapes": Preset("blip-shapes", "small BLIP captioner trained here on generated scenes "
                              "(training/blip_shapes.py)", {}, trained=True, folder="blip-shapes"),
        "blip-vqa-shapes": Preset("blip-vqa-shapes", "small BLIP question answerer trained here on generated scenes "
                                  "(training/blip_shapes.py)", {}, trained=True, folder="blip-vqa-shapes"),
        "blip-itm-shapes": Preset("blip-itm-shapes", "small BLIP image-text matcher (ITM and ITC) trained here on "
                                  "generated scenes (training/blip_shapes.py)", {}, trained=True,
                                  folder="blip-itm-shapes"),
        "blip-base": Preset("blip-base", "BLIP base sizes: ViT-B/16 at 384 px, BERT-base text decoder",
                            {"vision": _vision(384, 16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                               num_attention_heads=12),
                             "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=512),
                             "lm_head_std": LM_HEAD_STD}),
    }

    def load_pretrained(self, source, revision):
        from transformers import AutoConfig, AutoTokenizer, BlipImageProcessorPil

        from edgevfm.export.errors import CheckpointError

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

        tokenizer = blip_tokenizer()
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
        shapes = Shapes.of(checkpoint.model)
        vision = PartSpec("vision", VisionEncoder,
                          [TensorSpec("pixel_values", "float32", ("batch", 3, shapes.size, shapes.size))],
                          [shapes.image()], shapes.pixels)
        return [vision] + TASK_EXPORTS[task_of(checkpoint.model)].parts(shapes)

    def manifest_sections(self, checkpoint):
        task = task_of(checkpoint.model)
        return {"task": task, "preprocessing": blip_preprocessing(checkpoint), "tokenizer": {"file": "tokenizer.json"},
                "text": TASK_EXPORTS[task].text(checkpoint.model.config.text_config)}

    def write_assets(self, checkpoint, stage: Path):
        checkpoint.assets["tokenizer"].backend_tokenizer.save(str(stage / "tokenizer.json"))


TASKS = {"BlipForConditionalGeneration": "caption", "BlipForQuestionAnswering": "vqa",
         "BlipForImageTextRetrieval": "retrieval"}


def _model_class(task: str):
    import transformers

    return getattr(transformers, next(name for name, t in TASKS.items() if t == task))


def task_of(model) -> str:
    return TASKS[type(model).__name__]


def blip_tokenizer(corpus: list[str] | None = None):
    """A WordPiece tokenizer built offline from ``corpus`` (default: a small English corpus; lower
    case, BERT's special tokens, the punctuation it holds, every character and ``##`` continuation,
    its whole words) with BLIP's ``[DEC]`` (the decoder's start token) and ``[ENC]`` added after
    the vocabulary."""
    import string

    from transformers import BertTokenizer

    from ..bpe import ENGLISH

    corpus = ENGLISH + CAPTION_CORPUS if corpus is None else corpus
    marks = [".", ",", "?", "!"]
    marks += sorted({c for line in corpus for c in line if c in string.punctuation} - set(marks))
    words = sorted({w.strip(string.punctuation) for line in corpus for w in line.lower().split()} - {""})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + marks + chars + [f"##{c}" for c in chars]
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


from . import blip_caption, blip_retrieval, blip_vqa  # noqa: E402,F401  (register each task's export)
