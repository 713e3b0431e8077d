"""The generation engine's pieces, family-free: logits processors against transformers' own,
settings checked, and streaming that never splits a character or leaks a stop string."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevfm.runtime.errors import UsageError
from edgevfm.runtime.generate import left_pad
from edgevfm.runtime.sampling import (GenerationConfig, min_p, no_repeat_ngram, processors, repetition_penalty,
                                      temperature, top_k, top_p)
from edgevfm.runtime.streaming import stream_text

from helpers import assert_close


@pytest.fixture
def scores():
    return np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 3


@pytest.mark.parametrize("ours, theirs", [
    (repetition_penalty(1.3), "RepetitionPenaltyLogitsProcessor(1.3)"),
    (temperature(0.7), "TemperatureLogitsWarper(0.7)"),
    (top_k(5), "TopKLogitsWarper(5)"),
    (top_p(0.8), "TopPLogitsWarper(0.8)"),
    (min_p(0.1), "MinPLogitsWarper(0.1)"),
], ids=["repetition", "temperature", "top-k", "top-p", "min-p"])
def test_processor_matches_transformers(ours, theirs, scores):
    import transformers

    seen = [[1, 2, 2, 7], [], [49]]
    ids = torch.tensor([[1, 2, 2, 7], [0, 0, 0, 0], [49, 49, 49, 49]])  # row 1: token 0 seen there
    seen[1] = [0]
    reference = eval(f"transformers.{theirs}")(ids, torch.tensor(scores.copy())).numpy()
    got = ours(scores.copy(), seen)
    assert np.array_equal(np.isinf(got), np.isinf(reference))
    assert_close(np.where(np.isinf(got), 0, got), np.where(np.isinf(reference), 0, reference), atol=1e-5,
                 what=theirs)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram_matches_transformers(size, scores):
    from transformers import NoRepeatNGramLogitsProcessor

    rows = [[1, 2, 3, 1, 2, 3, 1, 2], [4, 4, 4, 4, 4, 4, 4, 4], [5, 6, 7, 8, 9, 10, 11, 6]]
    reference = NoRepeatNGramLogitsProcessor(size)(torch.tensor(rows), torch.tensor(scores.copy())).numpy()
    got = no_repeat_ngram(size)(scores.copy(), rows)
    assert np.isinf(reference).any() and np.array_equal(np.isinf(got), np.isinf(reference))
    assert np.array_equal(np.where(np.isinf(got), 0, got), np.where(np.isinf(reference), 0, reference))


def test_greedy_uses_no_warpers():
    assert processors(GenerationConfig(temperature=0.5, top_k=3)) == []
    assert len(processors(GenerationConfig(do_sample=True, temperature=0.5, top_k=3, top_p=0.9, min_p=0.05,
                                           repetition_penalty=1.1))) == 5


@pytest.mark.parametrize("options, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(temperature=0), "temperature must be a finite number above 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number above 0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(min_p=1.0), r"min_p must be in \[0, 1\)"),
    (dict(repetition_penalty=-1), "repetition_penalty must be a finite number above 0"),
    (dict(stop_strings=("",)), "stop_strings must be non-empty strings"),
    (dict(nucleus=0.9), "unknown generation settings \\['nucleus'\\]"),
    (dict(num_beams=0), "num_beams must be an integer >= 1"),
    (dict(num_beams=3, do_sample=True), "set do_sample=False with num_beams > 1"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(length_penalty=float("inf")), "length_penalty must be a finite number"),
])
def test_settings_out_of_range(options, message):
    with pytest.raises(UsageError, match=message):
        GenerationConfig().with_options(**options)


def test_left_padding_positions():
    embeds, mask, positions = left_pad([np.ones((2, 4), np.float32), np.ones((4, 4), np.float32)])
    assert embeds.shape == (2, 4, 4) and mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert positions.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]] and embeds[0, :2].sum() == 0


def _decoder(pieces: dict[int, bytes]):
    return lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_streaming_holds_a_character_split_across_tokens():
    pieces = {0: b"caf", 1: "é".encode()[:1], 2: "é".encode()[1:], 3: b" ", 4: "日".encode()[:2], 5: "日".encode()[2:]}
    out = list(stream_text(iter([0, 1, 2, 3, 4, 5]), _decoder(pieces)))
    assert "".join(out) == "café 日" and all("\ufffd" not in piece for piece in out)


def test_streaming_stops_before_a_stop_string_split_across_tokens():
    pieces = {0: b"yes", 1: b" US", 2: b"ER:", 3: b" more"}
    out = list(stream_text(iter([0, 1, 2, 3]), _decoder(pieces), stop_strings=["USER:"]))
    assert "".join(out) == "yes " and not any("US" in piece for piece in out)
