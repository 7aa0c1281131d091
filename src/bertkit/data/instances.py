"""Next-sentence-prediction instances, following the original `create_pretraining_data.py`.

Per document: fill a target length (`max_seq_length - 3`, shorter with probability `short_seq_prob`), split the
chunk at a random sentence boundary into A and B; with probability 0.5 B is the real continuation (IsNext), else
B is taken from a random other document (NotNext) and the chunk's unused sentences are put back. The longer side
is truncated from a random end.

One change from the original: there, a chunk of a single sentence always got a random B, so fewer than half of
the instances were IsNext. Here the IsNext/NotNext coin is tossed first, and an IsNext chunk of one sentence is
split inside that sentence, so B is still the real continuation and IsNext stays at 50%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertkit.tokenizer import truncate_pair_lengths

IS_NEXT, NOT_NEXT = 0, 1  # NSP labels as in transformers: 0 = B continues A, 1 = B is random


@dataclass
class Instance:
    """One NSP pair before special tokens: A and B token ids, the NSP label, optional word-start flags."""

    tokens_a: list[int]
    tokens_b: list[int]
    nsp_label: int
    starts_a: list[int] | None = None  # word-start flags (whole-word masking), aligned with the tokens
    starts_b: list[int] | None = None


def truncate_pair_randomly(
    a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator, sa: list | None, sb: list | None
):
    """Trim the longer of A and B (B on a tie) one token at a time from a random end until they fit.

    Returns new (a, b, sa, sb); the flags lists `sa`/`sb` (or None) are cut in the same places.
    """
    la, lb = truncate_pair_lengths(len(a), len(b), max_tokens)  # longer side first, B on a tie
    cut = {"a": len(a) - la, "b": len(b) - lb}

    def trim(x: list, flags: list | None, k: int):
        if k == 0:
            return x, flags
        front = int(rng.binomial(k, 0.5))  # each pop is a fair coin between the two ends
        back = len(x) - (k - front)
        return x[front:back], (flags[front:back] if flags is not None else None)

    a, sa = trim(a, sa, cut["a"])
    b, sb = trim(b, sb, cut["b"])
    return a, b, sa, sb


def _concat(segments: list[list[int]]) -> list[int]:
    return [t for s in segments for t in s]


def instances_from_document(
    doc_index: int,
    documents: list[list[list[int]]],
    rng: np.random.Generator,
    max_seq_length: int,
    short_seq_prob: float = 0.1,
    word_starts: list[list[list[int]]] | None = None,
    nsp: bool = True,
) -> list[Instance]:
    """NSP instances of `documents[doc_index]` (a list of tokenized sentences); B may come from other documents.

    `word_starts`, when given, parallels `documents` with 1/0 word-start flags per token.
    """
    document = documents[doc_index]
    flags_doc = word_starts[doc_index] if word_starts is not None else None
    max_tokens = max_seq_length - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    out: list[Instance] = []
    chunk: list[int] = []  # indices of sentences in the current chunk
    length = 0
    i = 0
    while i < len(document):
        chunk.append(i)
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            random_next = nsp and len(documents) > 1 and rng.random() < 0.5
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = _concat([document[j] for j in chunk[:a_end]])
            sa = _concat([flags_doc[j] for j in chunk[:a_end]]) if flags_doc is not None else None
            sb: list[int] | None
            if random_next:
                b, sb = _random_segment(doc_index, documents, word_starts, rng, max(1, target - len(a)))
                i -= len(chunk) - a_end  # the sentences not used go back for the next chunk
            elif len(chunk) >= 2:
                b = _concat([document[j] for j in chunk[a_end:]])
                sb = _concat([flags_doc[j] for j in chunk[a_end:]]) if flags_doc is not None else None
            else:  # one sentence: split it, so B is still the true continuation
                if len(a) < 2:
                    chunk, length, i = [], 0, i + 1
                    continue
                cut = int(rng.integers(1, len(a)))
                a, b = a[:cut], a[cut:]
                sa, sb = (sa[:cut], sa[cut:]) if sa is not None else (None, None)
            a, b, sa, sb = truncate_pair_randomly(a, b, max_tokens, rng, sa, sb)
            if a and b:
                out.append(Instance(a, b, NOT_NEXT if random_next else IS_NEXT, sa, sb))
            chunk, length = [], 0
        i += 1
    return out


def _random_segment(doc_index, documents, word_starts, rng, target_length):
    other = doc_index
    while other == doc_index:  # len(documents) > 1 is guaranteed by the caller
        other = int(rng.integers(0, len(documents)))
    doc = documents[other]
    start = int(rng.integers(0, len(doc)))
    b: list[int] = []
    sb: list[int] | None = [] if word_starts is not None else None
    for j in range(start, len(doc)):
        b.extend(doc[j])
        if sb is not None:
            sb.extend(word_starts[other][j])
        if len(b) >= target_length:
            break
    return b, sb
