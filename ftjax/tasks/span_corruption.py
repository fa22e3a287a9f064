"""T5's pre-training corruption (Raffel et al. 2020, sec. 3.1.4): a share of the tokens
(noise density, 0.15) in spans of a mean length (3) is dropped from the input, each span
replaced by one sentinel, in order (<extra_id_0>, <extra_id_1>, ...); the target is each
sentinel followed by the span it stands for, then EOS.

The span layout follows T5's `random_spans_noise_mask`: exactly round(n * density) noise
tokens (at least 1, and at least one kept), in round(noise / mean span) spans; noise and
kept tokens are each cut into that many non-empty runs at random, and the sequence
alternates kept, noise, kept, noise, ... starting with kept tokens.
"""

from __future__ import annotations

import numpy as np


def span_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) for a sequence of `length` tokens (length >= 2)."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(int(round(noise / mean_span)), 1)
    return noise, min(spans, noise, length - noise)


def corrupted_lengths(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(input, target) lengths after corruption, EOS included in both."""
    noise, spans = span_counts(length, density, mean_span)
    return length - noise + spans + 1, noise + spans + 1


def _segments(items: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`items` cut into `count` non-empty runs at random: their lengths."""
    cuts = np.sort(rng.choice(np.arange(1, items), size=count - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [items]]))


def noise_mask(
    length: int, density: float, mean_span: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean [length]: which tokens are dropped into the target."""
    noise, spans = span_counts(length, density, mean_span)
    kept_runs = _segments(length - noise, spans, rng)
    noise_runs = _segments(noise, spans, rng)
    runs = np.stack([kept_runs, noise_runs], axis=1).ravel()
    return np.repeat(np.tile([False, True], spans), runs)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray, eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): each noise span replaced by the next sentinel in the input and
    listed after it in the target; both end with EOS."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])  # first token of each span
    span_index = np.cumsum(starts) - 1
    inputs, targets = [], []
    for i, token in enumerate(tokens):
        if not mask[i]:
            inputs.append(token)
            continue
        if starts[i]:
            inputs.append(sentinels[span_index[i]])
            targets.append(sentinels[span_index[i]])
        targets.append(token)
    return np.asarray([*inputs, eos], np.int32), np.asarray([*targets, eos], np.int32)
