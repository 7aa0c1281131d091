"""Next-sentence-prediction instances, following the original `create_pretraining_data.py`.

Per document: fill a target length (`max_seq_length - 3`, shorter with probability `short_seq_prob`), split the
chunk at a random sentence boundary into A and B; with probability 0.5 B is the real continuation (IsNext), else
B is taken from a random other document (NotNext) and the chunk's unused sentences are put back. The longer side
is truncated from a random end.

One change from the original: there, a chunk of a single sentence always got a random B, so fewer than half of
the instances were IsNext. Here the IsNext/NotNext coin is tossed first, and an IsNext chunk of one sentence is
split inside that sentence at the start of a word, so B is still the real continuation and IsNext stays at 50%
(a B that began with a `##` piece would give its label away: a random B never does). A sentence of one word has
no such place and gets a random B, as the original gives every one-sentence chunk.

A and B are always runs of consecutive tokens of one document (whole sentences, cut inside by a one-sentence
split or by truncation), so instances are built as spans of one flat token array (`instance_spans`): no token is
touched in Python, and the tokens are gathered afterwards in one vectorised step.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bertkit.tokenizer import truncate_pair_lengths

IS_NEXT, NOT_NEXT = 0, 1  # NSP labels as in transformers: 0 = B continues A, 1 = B is random


class Span(NamedTuple):
    """One NSP pair as token positions in a flat array: A is `[a_start, a_end)`, B is `[b_start, b_end)`."""

    a_start: int
    a_end: int
    b_start: int
    b_end: int
    nsp_label: int


@dataclass(frozen=True)
class Block:
    """Tokenized documents laid out flat: sentence k holds tokens `[token_starts[k], token_starts[k + 1])` and
    document d holds sentences `[doc_starts[d], doc_starts[d + 1])`. Every sentence has at least one token and
    every document at least one sentence."""

    token_starts: Sequence[int]  # a list (bisect on it is fast), one more entry than sentences
    doc_starts: Sequence[int]  # one more entry than documents
    word_starts: np.ndarray | None = None  # per token: True where it starts a word (None: every token does)

    @property
    def num_documents(self) -> int:
        """How many documents the block holds."""
        return len(self.doc_starts) - 1


def _truncate_spans(
    a: tuple[int, int], b: tuple[int, int], max_tokens: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Trim the longer of A and B (B on a tie) one token at a time from a random end until they fit.

    The original pops one token at a time; here each side's number of pops from the front is drawn at once
    (each pop is a fair coin between the two ends), A's before B's."""
    (a0, a1), (b0, b1) = a, b
    la, lb = truncate_pair_lengths(a1 - a0, b1 - b0, max_tokens)  # longer side first, B on a tie
    cut = a1 - a0 - la
    if cut:
        front = int(rng.binomial(cut, 0.5))
        a0, a1 = a0 + front, a1 - (cut - front)
    cut = b1 - b0 - lb
    if cut:
        front = int(rng.binomial(cut, 0.5))
        b0, b1 = b0 + front, b1 - (cut - front)
    return a0, a1, b0, b1


def instance_spans(
    doc_index: int,
    block: Block,
    rng: np.random.Generator,
    max_seq_length: int,
    short_seq_prob: float,
    nsp: bool,
) -> list[Span]:
    """NSP instances of document `doc_index` of `block`, as spans of the block's flat tokens; B may come from
    other documents."""
    starts, docs = block.token_starts, block.doc_starts
    first, end = docs[doc_index], docs[doc_index + 1]  # the document's sentences
    many_docs = nsp and block.num_documents > 1
    max_tokens = max_seq_length - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    out: list[Span] = []
    c0 = first  # first sentence of the current chunk
    while c0 < end:
        # The chunk grows sentence by sentence until it reaches the target length or the document's end:
        # it ends before sentence `c1`, the first boundary at least `target` tokens after its start.
        c1 = bisect_left(starts, starts[c0] + target, c0 + 1, end)
        size = c1 - c0
        random_next = many_docs and rng.random() < 0.5
        a_end = c0 + (int(rng.integers(1, size)) if size >= 2 else 1)
        a = (starts[c0], starts[a_end])
        cut = None
        if not random_next and size < 2:  # one sentence: split it at a word, so B is still the true continuation
            cut = _word_cut(block, a, rng)
            if cut is None:
                if not many_docs:
                    c0 = c1
                    continue
                random_next = True
        if random_next:
            b = _random_segment(doc_index, block, rng, max(1, target - (a[1] - a[0])))
            c1 = a_end  # the sentences not used go back for the next chunk
        elif cut is None:
            b = (starts[a_end], starts[c1])
        else:
            a, b = (a[0], cut), (cut, a[1])
        a0, a1, b0, b1 = _truncate_spans(a, b, max_tokens, rng)
        if a1 > a0 and b1 > b0:
            out.append(Span(a0, a1, b0, b1, NOT_NEXT if random_next else IS_NEXT))
        c0 = c1
    return out


def _word_cut(block: Block, sentence: tuple[int, int], rng: np.random.Generator) -> int | None:
    """A random token position inside `sentence` (not its first) where a word starts; None if there is none."""
    begin, end = sentence
    if block.word_starts is None:
        return begin + int(rng.integers(1, end - begin)) if end - begin >= 2 else None
    inside = np.flatnonzero(block.word_starts[begin + 1 : end])
    return begin + 1 + int(inside[rng.integers(len(inside))]) if len(inside) else None


def _random_segment(doc_index: int, block: Block, rng: np.random.Generator, target_length: int) -> tuple[int, int]:
    """Consecutive sentences of a random other document, from a random one on, up to `target_length` tokens or
    that document's end (as token positions)."""
    other = doc_index
    while other == doc_index:  # more than one document is guaranteed by the caller
        other = int(rng.integers(0, block.num_documents))
    first, end = block.doc_starts[other], block.doc_starts[other + 1]
    start = first + int(rng.integers(0, end - first))
    starts = block.token_starts
    stop = bisect_left(starts, starts[start] + target_length, start + 1, end)
    return starts[start], starts[stop]


def gather_spans(spans: Sequence[Span], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`values[A] + values[B]` of every span, concatenated, and the (len_a, len_b, nsp_label) rows (int64)."""
    table = np.asarray(spans, dtype=np.int64).reshape(-1, 5)
    lengths = np.stack([table[:, 1] - table[:, 0], table[:, 3] - table[:, 2]], axis=1)
    segment_starts, segment_lengths = table[:, [0, 2]].ravel(), lengths.ravel()
    # Position k of the output comes from segment s at offset k - (where s starts in the output).
    out_starts = np.cumsum(segment_lengths) - segment_lengths
    index = np.repeat(segment_starts - out_starts, segment_lengths) + np.arange(int(segment_lengths.sum()))
    return values[index], np.column_stack([lengths, table[:, 4]])
