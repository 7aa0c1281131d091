"""Masked-LM corruption: choose `mask_prob` of the non-special tokens; of those 80% -> [MASK], 10% unchanged,
10% a random non-special token (all ratios configurable). Whole-word masking chooses whole words at a time.

Masks are drawn from a generator seeded by (seed, epoch, instance) so that they are reproducible: dynamic masking
uses the epoch (a fresh mask each pass), static masking leaves it out (the same mask every pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from bertkit.constants import IGNORE_INDEX
from bertkit.errors import BertkitError
from bertkit.options import FRACTION, POSITIVE, check_values, number, option


@dataclass
class MaskingConfig:
    """MLM corruption settings: share of tokens chosen, cap per sequence, [MASK]/random split, whole words."""

    mask_prob: float = option(0.15, type=number(0, 1, low_open=True, high_open=True), help="share of tokens chosen")
    max_predictions: int | None = option(  # the original's max_predictions_per_seq
        None, type=POSITIVE,
        help="cap of chosen tokens per sequence (default: the share of the data's sequence length, rounded up: 20 for "
        "128 tokens, 77 for 512, as the original's 20 and 80)",
    )  # fmt: skip
    mask_frac: float = option(0.8, type=FRACTION, help="share of the chosen tokens replaced by [MASK]")
    random_frac: float = option(  # the rest stay unchanged
        0.1, type=FRACTION, help="share of the chosen tokens replaced by a random token"
    )
    whole_word: bool = option(False, flag="--whole-word-mask", help="choose whole words (data prepared with it)")

    def for_length(self, max_seq_length: int) -> MaskingConfig:
        """These settings with the cap set for sequences of `max_seq_length` tokens, when it is not set: a cap fixed
        for 128-token sequences chooses far fewer than `mask_prob` of a longer sequence's tokens."""
        if self.max_predictions is not None:
            return self
        return replace(self, max_predictions=math.ceil(self.mask_prob * max_seq_length))

    def __post_init__(self) -> None:
        check_values(self)  # each share's range; then how they add up
        if self.mask_frac < 0 or self.random_frac < 0 or self.mask_frac + self.random_frac > 1:
            raise BertkitError(
                f"masking split {self.mask_frac}/{1 - self.mask_frac - self.random_frac:.2f}/{self.random_frac} "
                "([MASK]/unchanged/random) must be non-negative and sum to 1"
            )


def word_groups(candidates: np.ndarray, word_starts: np.ndarray | None) -> list[np.ndarray]:
    """Group candidate positions into words: a position whose flag is 0 continues the previous word."""
    if word_starts is None or len(candidates) == 0:
        return [candidates[i : i + 1] for i in range(len(candidates))]
    groups: list[list[int]] = []
    prev = -2
    for p in candidates.tolist():
        if groups and word_starts[p] == 0 and p == prev + 1:
            groups[-1].append(p)
        else:
            groups.append([p])
        prev = p
    return [np.asarray(g) for g in groups]


def mask_sequence(
    input_ids: np.ndarray,
    special: np.ndarray,
    rng: np.random.Generator,
    cfg: MaskingConfig,
    mask_id: int,
    random_ids: np.ndarray,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt one sequence; returns (corrupted ids, labels) with labels = IGNORE_INDEX where not chosen.

    The number chosen is `mask_prob * n` for n non-special tokens, rounded up or down at random so that it is
    exact on average, and capped at `max_predictions`.
    """
    ids = input_ids.copy()
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    candidates = np.flatnonzero(~special)
    expected = len(candidates) * cfg.mask_prob
    cap = cfg.for_length(len(ids)).max_predictions  # `for_length` of the data's length, where the data is known
    n_target = min(cap, int(expected) + int(rng.random() < expected - int(expected)))
    if n_target == 0:
        return ids, labels
    if cfg.whole_word and word_starts is not None:
        groups = word_groups(candidates, word_starts)
        chosen_list: list[int] = []
        for gi in rng.permutation(len(groups)):
            if len(chosen_list) >= n_target:
                break
            if len(chosen_list) + len(groups[gi]) <= n_target:  # as the original: skip a word that overshoots
                chosen_list.extend(groups[gi].tolist())
        chosen = np.asarray(sorted(chosen_list), dtype=np.int64)
    else:
        chosen = np.sort(rng.choice(candidates, size=n_target, replace=False))
    labels[chosen] = ids[chosen]
    r = rng.random(len(chosen))
    to_mask = chosen[r < cfg.mask_frac]
    to_random = chosen[r >= 1.0 - cfg.random_frac]
    ids[to_mask] = mask_id
    ids[to_random] = random_ids[rng.integers(0, len(random_ids), size=len(to_random))]
    return ids, labels
