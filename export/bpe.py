"""A deterministic BPE trainer for the presets' tokenizers.

``tokenizers``' own ``BpeTrainer`` breaks ties between equally frequent pairs in hash-map order,
which changes from process to process: the same corpus gave a different merge table in each run,
so a preset was not the same model twice. Here ties go to the smallest pair, so a corpus always
gives the same merges, in every process and on every machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

# A small English corpus to train the presets' BPE merges offline (real merges are not shipped
# with transformers); each family's tokenizer pipeline around them is the model's own.
ENGLISH = """a photo of a cat. a photo of a dog. a picture of an astronaut in a space suit.
a cup of coffee on a table. a rocket on the launch pad. a horse in a field. a camera man.
the moon at night. a pile of coins. a page of printed text. a brick wall. green grass.
a close up photo of the retina. a microscope image of tissue. the hubble deep field.
an orange tabby cat looking at the camera. a black and white photograph of a man.
a colourful wheel of colours. a logo on a white background. gravel on the ground.
a bird flying over the sea. a car parked on the street. a person riding a bicycle.
a plate of food with vegetables. a city skyline at sunset. a boat on the river.
there is a small house with a red roof near the mountains and the trees.
""".split("\n")


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


def byte_level(corpus: Iterable[str], splitter, max_merges: int = 500) -> tuple[list[str], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary (the 256 byte symbols, then each merge) and its merges, trained
    on ``corpus`` as split by ``splitter`` (a ``tokenizers`` pre-tokenizer: GPT-2's, Qwen2's)."""
    from tokenizers import pre_tokenizers

    words = [tuple(w) for line in corpus for w, _ in splitter.pre_tokenize_str(line)]
    merges = train_merges(words, max_merges=max_merges)
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + [a + b for a, b in merges]
    return list(dict.fromkeys(tokens)), merges


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
