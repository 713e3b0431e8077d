"""The generation engine: one decoding loop for every language-model part, family-free.

It drives a *decoder* (:mod:`.decoders`): a bundle part that maps input embeddings, an attention
mask, position ids and a KV cache to logits and the grown cache. Families only prepare the
prompt's embeddings (image features merged in, a Q-Former prefix, ...) and read the text out.

- :func:`generate_tokens` / :func:`generate`: greedy decoding or seeded sampling over a batch of
  prompts, left-padded; each row stops on its own stop token or stop string; the settings and the
  logits processors are :mod:`.sampling`'s.
- :func:`beam_search`: transformers' beam search, token for token, on the same processors.
- :class:`Session`: a conversation's cache between turns; a new turn prefills only what its prompt
  does not share with the last one.
- :mod:`.streaming` turns the token ids into text pieces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .decoders import KVDecoder
from .errors import UsageError
from .sampling import GenerationConfig, log_softmax, processors, softmax


@dataclass
class Generation:
    """What :func:`generate` made: ``tokens`` per row (stop token excluded), and timings in
    seconds: ``prefill``, ``decode`` (all later steps), ``backend`` (inside the decoder),
    ``steps`` (decoder calls after the prefill)."""

    tokens: list[list[int]]
    stats: dict = field(default_factory=dict)

    @property
    def loop_overhead_per_token(self) -> float:
        """Seconds per decode step spent outside the decoder: the loop's own cost."""
        steps = max(1, self.stats.get("steps", 0))
        return max(0.0, self.stats["decode"] - self.stats["decode_backend"]) / steps


@dataclass
class Session:
    """A conversation's KV cache between turns: ``ids`` are the tokens whose keys and values it
    holds. A new turn whose prompt starts with the same tokens prefills only the rest;
    ``prefilled`` is how many tokens the last turn prefilled."""

    ids: list[int] = field(default_factory=list)
    cache: object = None
    prefilled: int = 0
    finish_reason: str | None = None  # of the last turn streamed: "stop", or "length" (cut at max_new_tokens)
    generated: int = 0  # tokens the last turn streamed made (its stop token excluded)


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def left_pad(prompts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prompt embeddings (S_i, H) -> (embeds (B, S, H), attention mask (B, S), position ids (B, S)),
    padded on the left as transformers' generate expects; prompts of token ids (S_i,) give (B, S)."""
    longest = max(len(p) for p in prompts)
    embeds = np.zeros((len(prompts), longest, *prompts[0].shape[1:]), prompts[0].dtype)
    mask = np.zeros((len(prompts), longest), np.int64)
    for row, prompt in enumerate(prompts):
        embeds[row, longest - len(prompt):] = prompt
        mask[row, longest - len(prompt):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return embeds, mask, positions


def generate_tokens(decoder: KVDecoder, embed: Callable[[np.ndarray], np.ndarray], prompts: Sequence[np.ndarray],
                    prompt_ids: Sequence[Sequence[int]], config: GenerationConfig,
                    stop_check: Callable[[int, list[int]], bool] | None = None,
                    session: Session | None = None) -> Iterator[list[int | None]]:
    """Decode step by step; yields, per step, the new token of each row (None for a finished row).
    ``embed(ids (B, 1)) -> (B, 1, H)`` embeds the tokens picked; ``prompt_ids`` feed the repetition
    penalty; ``stop_check(row, tokens)`` may end a row early (stop strings); :func:`generate`
    runs it to the end and times it. With a ``session`` (one prompt), the cache of its previous
    turn is reused for the tokens this prompt shares with it, and the session keeps this turn's."""
    config = config.checked()
    if config.num_beams > 1:
        raise UsageError(f"beam search (num_beams={config.num_beams}) picks its answer at the end and cannot stream: "
                         "use generate(), or num_beams=1")
    rng = np.random.default_rng(config.seed)
    steps = processors(config, [len(ids) for ids in prompt_ids])
    if not decoder.pads_left and len({len(p) for p in prompts}) > 1:
        raise UsageError("this decoder takes no padding: generate() runs prompts of different lengths one by one")
    embeds, mask, positions = left_pad(prompts)
    batch = len(prompts)
    capacity = embeds.shape[1] + config.max_new_tokens
    reused = 0
    if session is not None and len(prompts) == 1 and session.cache is not None:
        reused = min(shared_prefix(session.ids, prompt_ids[0]), len(prompt_ids[0]) - 1)
    if reused:
        cache = decoder.resume(session.cache, reused, capacity)
        embeds, positions = embeds[:, reused:], positions[:, reused:]
    else:
        cache = decoder.empty_cache(batch, capacity)
    if session is not None:
        session.ids, session.cache, session.prefilled = [], None, embeds.shape[1]
    seen = [list(ids) for ids in prompt_ids]
    done = [False] * batch
    made: list[list[int]] = [[] for _ in range(batch)]
    stop_ids = set(config.stop_token_ids)
    fed = list(prompt_ids[0]) if session is not None else []
    for step in range(config.max_new_tokens):
        scores, _, cache = decoder.step(embeds, mask, positions, cache)
        if session is not None:  # the cache now holds every token fed so far
            session.ids, session.cache = list(fed), cache
        scores = scores.astype(np.float32, copy=True)
        for process in steps:
            scores = process(scores, seen)
        if config.do_sample:
            probs = softmax(scores.astype(np.float64))
            picked = [int(rng.choice(len(p), p=p / p.sum())) for p in probs]
        else:
            picked = [int(i) for i in np.argmax(scores, axis=-1)]
        out: list[int | None] = []
        for row, token in enumerate(picked):
            if done[row]:
                out.append(None)
                continue
            if token in stop_ids:
                done[row] = True
                out.append(None)
                continue
            made[row].append(token)
            seen[row].append(token)
            out.append(token)
            if stop_check is not None and stop_check(row, made[row]):
                done[row] = True
        yield out
        if all(done):
            return
        ids = np.asarray(picked, np.int64)[:, None]
        embeds = embed(ids)
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        fed += picked[:1]


def generate(decoder: KVDecoder, embed: Callable[[np.ndarray], np.ndarray], prompts: Sequence[np.ndarray],
             prompt_ids: Sequence[Sequence[int]], config: GenerationConfig,
             stop_check: Callable[[int, list[int]], bool] | None = None) -> Generation:
    """Run :func:`generate_tokens` to the end, timing the prefill, the decode steps and the share
    of both spent inside the decoder. Prompts of different lengths on a decoder that takes no
    padding run one by one (their timings add up). ``num_beams > 1`` runs :func:`beam_search`."""
    if not decoder.pads_left and len({len(p) for p in prompts}) > 1:
        rows = [generate(decoder, embed, [p], [ids], config, None if stop_check is None else
                         (lambda row, tokens, i=i: stop_check(i, tokens)))
                for i, (p, ids) in enumerate(zip(prompts, prompt_ids))]
        stats = {key: sum(r.stats[key] for r in rows) for key in rows[0].stats}
        return Generation([r.tokens[0] for r in rows], stats)
    timed = _TimedDecoder(decoder)
    if config.checked().num_beams > 1:
        start = time.perf_counter()
        tokens = beam_search(timed, embed, prompts, prompt_ids, config)
        total = time.perf_counter() - start
        return Generation(tokens, {"prefill": timed.first, "decode": total - timed.first,
                                   "steps": max(0, timed.calls - 1), "decode_backend": timed.seconds - timed.first,
                                   "backend": timed.seconds})
    tokens: list[list[int]] = [[] for _ in prompts]
    start = time.perf_counter()
    prefill = None
    for step, picked in enumerate(generate_tokens(timed, embed, prompts, prompt_ids, config, stop_check)):
        if step == 0:
            prefill = time.perf_counter() - start
            prefill_backend = timed.seconds
        for row, token in enumerate(picked):
            if token is not None:
                tokens[row].append(token)
    total = time.perf_counter() - start
    prefill = total if prefill is None else prefill
    return Generation(tokens, {"prefill": prefill, "decode": total - prefill, "steps": max(0, timed.calls - 1),
                               "decode_backend": timed.seconds - prefill_backend, "backend": timed.seconds})


class _TimedDecoder:
    def __init__(self, decoder):
        self.decoder, self.seconds, self.calls, self.first = decoder, 0.0, 0, 0.0
        self.pads_left = decoder.pads_left

    def empty_cache(self, batch, capacity=None):
        return self.decoder.empty_cache(batch, capacity)

    def reorder(self, cache, rows):
        return self.decoder.reorder(cache, rows)

    def step(self, *args):
        start = time.perf_counter()
        try:
            return self.decoder.step(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            if self.calls == 1:
                self.first = self.seconds


def beam_search(decoder, embed: Callable[[np.ndarray], np.ndarray], prompts: Sequence[np.ndarray],
                prompt_ids: Sequence[Sequence[int]], config: GenerationConfig) -> list[list[int]]:
    """The best of ``num_beams`` hypotheses per prompt, as transformers' beam search picks it: each
    step keeps the 2 x beams best continuations of all beams (sum of log-probabilities after the
    processors), moves those ending in a stop token (or at ``max_new_tokens``) among the finished
    ones scored by length ** ``length_penalty``, continues the best ``num_beams`` others, and stops
    when no running beam can beat the finished ones (``early_stopping``). The prompt is prefilled
    once per row and its cache copied to each beam. Returns tokens per row, stop token excluded."""
    config = config.checked()
    beams = config.num_beams
    steps = processors(config, [len(prompt_ids[b]) for b in range(len(prompts)) for _ in range(beams)])
    stop_ids = set(config.stop_token_ids)
    keep = max(2, 1 + len(stop_ids)) * beams
    embeds, mask, positions = left_pad(prompts)
    batch, longest = len(prompts), embeds.shape[1]
    cache = decoder.empty_cache(batch, longest + config.max_new_tokens)
    scores, _, cache = decoder.step(embeds, mask, positions, cache)
    rows = np.repeat(np.arange(batch), beams)  # row b's beams are b * beams ... b * beams + beams - 1
    cache, mask, positions = decoder.reorder(cache, rows), mask[rows], positions[rows]
    scores = scores[rows]
    running = [[list(prompt_ids[b]) for _ in range(beams)] for b in range(batch)]  # prompt + generated
    running_scores = np.zeros((batch, beams), np.float32)  # float32 throughout, as transformers
    running_scores[:, 1:] = -1e9  # the first step continues beam 0 only: the beams start identical
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]  # (score, sequence), best first
    improvable = np.ones(batch, bool)
    for step in range(config.max_new_tokens):
        logp = log_softmax(scores.astype(np.float32))
        for process in steps:
            logp = process(logp, [seq for row in running for seq in row])
        total = (logp.reshape(batch, beams, -1) + running_scores[:, :, None]).reshape(batch, -1)
        vocab = logp.shape[-1]
        top = np.argsort(-total, axis=-1, kind="stable")[:, :keep]
        top_scores = np.take_along_axis(total, top, axis=-1)
        origin, token = top // vocab, top % vocab
        last = step + 1 == config.max_new_tokens
        hits = np.isin(token, list(stop_ids)) | last
        generated = step + 1
        next_rows, next_scores, next_seqs = [], np.zeros((batch, beams), np.float32), []
        for b in range(batch):
            # finished: the top `beams` candidates that hit a stop, if improvement is still possible
            full = len(finished[b]) == beams and config.early_stopping is True
            for j in range(beams):
                if hits[b, j] and improvable[b] and not full:
                    score = top_scores[b, j] / (generated ** config.length_penalty)
                    seq = running[b][origin[b, j]] + [int(token[b, j])]
                    finished[b].append((float(score), seq))
            finished[b] = sorted(finished[b], key=lambda f: -f[0])[:beams]
            alive = [j for j in range(keep) if not hits[b, j]][:beams]
            while len(alive) < beams:  # every continuation hit a stop: the loop ends below
                alive.append(alive[-1] if alive else 0)
            next_rows += [b * beams + origin[b, j] for j in alive]
            next_scores[b] = [top_scores[b, j] if not hits[b, j] else -1e9 for j in alive]
            next_seqs.append([running[b][origin[b, j]] + [int(token[b, j])] for j in alive])
        running, running_scores = next_seqs, next_scores
        if last or hits.all():
            break
        # can a running beam still beat the worst finished one?
        length = generated if not (config.early_stopping == "never" and config.length_penalty > 0) \
            else config.max_new_tokens
        best_possible = running_scores[:, 0] / (length ** config.length_penalty)
        for b in range(batch):
            if len(finished[b]) == beams:
                improvable[b] &= bool(best_possible[b] > finished[b][-1][0])
        if not improvable.any() or (config.early_stopping is True and all(len(f) == beams for f in finished)):
            break
        picked = np.asarray(next_rows)
        if not np.array_equal(picked, np.arange(len(picked))):
            cache, mask, positions = decoder.reorder(cache, picked), mask[picked], positions[picked]
        ids = np.asarray([seq[-1] for row in running for seq in row], np.int64)[:, None]
        mask = np.concatenate([mask, np.ones((len(picked), 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        scores, _, cache = decoder.step(embed(ids), mask, positions, cache)
    out = []
    for b in range(batch):
        best = finished[b][0][1] if finished[b] else running[b][0]
        tokens = best[len(prompt_ids[b]):]
        out.append(tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens)
    return out


