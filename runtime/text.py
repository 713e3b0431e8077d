"""Torch-free tokenization with the ``tokenizers`` library, driven by the manifest's settings.

Reproduces ``tokenizer(texts, padding=..., truncation=True, max_length=...)`` of transformers:
truncation keeps room for the special tokens, so a truncated text still ends in end-of-text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .schema import integer, listed_file, nullable, obj, string

_TOKEN_ID = integer(0, 1 << 24)
TOKENIZER = obj({"file": listed_file(), "max_length": integer(1, 1 << 16),
                 "padding": string(choices=("max_length", "longest")), "pad_token_id": _TOKEN_ID},
                {"eos_token_id": nullable(_TOKEN_ID), "bos_token_id": nullable(_TOKEN_ID)})
"""The manifest's ``tokenizer`` section, as :mod:`.schema` checks it."""


class TextTokenizer:
    """``settings``: ``max_length``, ``padding`` ("max_length" or "longest"), ``pad_token_id``."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        from tokenizers import Tokenizer

        self.settings = settings
        self.max_length = int(settings["max_length"])
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own exception type for a corrupt file
            raise ValueError(f"its tokenizer file {path.name!r} cannot be read ({exc})") from None
        vocab = self._tok.get_vocab_size()
        if int(settings["pad_token_id"]) >= vocab:
            raise ValueError(f"pad_token_id {settings['pad_token_id']} is outside the tokenizer's {vocab} tokens")
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.max_length)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Texts -> ``input_ids`` and ``attention_mask``, int64 arrays of shape (batch, length)."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise InputError("no texts given: pass at least one string")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise InputError(f"texts must be strings, found {', '.join(sorted(set(bad)))}")
        encodings = self._tok.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        length = self.max_length if self.settings.get("padding") == "max_length" else longest
        ids = np.full((len(texts), length), int(self.settings["pad_token_id"]), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}
