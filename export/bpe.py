"""A deterministic BPE trainer for the presets' tokenizers.

``tokenizers``' own ``BpeTrainer`` breaks ties between equally frequent pairs in hash-map order,
which changes from process to process: the same corpus gave a different merge table in each run,
so a preset was not the same model twice. Here ties go to the smallest pair, so a corpus always
gives the same merges, in every process and on every machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable


def train_merges(words: Iterable[tuple[str, ...]], max_merges: int) -> list[tuple[str, str]]:
    """Merges learnt from ``words`` (each a tuple of initial symbols, repeated as often as it
    occurs), most frequent pair first, ties to the smallest pair; at most ``max_merges``."""
    counts = Counter(words)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for word, count in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        counts = Counter({_merge(word, best): count for word, count in counts.items()})
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
