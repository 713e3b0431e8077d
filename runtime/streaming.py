"""Streaming text: token ids to text pieces, each given out once final (whole characters only,
never the start of a stop string)."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence


def stream_text(tokens: Iterator[int], decode: Callable[[list[int]], str],
                stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Text pieces for a stream of token ids. A piece is given out only once it is final: not the
    half of a character whose bytes span tokens (decoded as U+FFFD until complete), not a tail that
    may grow into a stop string; the text ends before the first stop string."""
    ids: list[int] = []
    sent = 0
    hold = max((len(s) for s in stop_strings), default=1) - 1
    text = ""
    for token in tokens:
        ids.append(token)
        text = decode(ids)
        cut = first_stop(text, stop_strings)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        ready = len(text) - hold
        while ready > sent and text[ready - 1] == "\ufffd":  # an unfinished character
            ready -= 1
        if ready > sent:
            yield text[sent:ready]
            sent = ready
    if len(text) > sent:
        yield text[sent:]


def first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(found) if found else None
