"""Documents and sentences: a corpus is lines of text with a blank line between documents."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertkit.files import BytesRead, read_lines
from bertkit.tokenizer import cjk_class

_IDEOGRAPH = cjk_class(bmp_only=True)
# Chinese: after 。！？； (and …… or ！？ runs), keeping closing quotes/brackets with the sentence. Text typed with
# half-width marks ("好.我们") ends sentences with . ! ? ; and no space: such a run counts as an end where a
# character outside ASCII comes before it and an ideograph or an opening quote (after any closers) after it, so
# "3.5", "e.g." and "U.S." inside Chinese stay whole.
_ZH_END = re.compile(
    rf"([。！？；]+|…{{1,2}}|(?<=[^\x00-\x7f])[.!?;]+(?=[”’」』）)\]]*[{_IDEOGRAPH}“‘「『（]))([”’」』）)\]]*)"
)
# English: . ! ? (plus closing quotes/brackets) followed by white space and something that is not lower case.
_EN_END = re.compile(r"([.!?]+[\"'”’)\]]*)\s+(?=[^a-z\s])")
# A line whose only Chinese end is one final run of end marks and closers (or that has none): `_ZH_END` matches it
# at most once, up to the line's end, so it does not split it. Most lines of a corpus are one sentence; this and
# one search for `_EN_END` decide that in C.
_ZH_ONE_SENTENCE = re.compile(r"[^。！？；…]*(?:(?:[。！？；]+|…{1,2})[”’」』）)\]]*)?")
# What may be a half-width end inside Chinese text (the fast check above does not look for these): a superset of
# those `_ZH_END` finds, without the test of the character before, which slows the search down.
_MAYBE_HALF_WIDTH_END = re.compile(rf"[.!?;][”’」』）)\]]*[{_IDEOGRAPH}“‘「『（]")


def split_sentences(line: str) -> list[str]:
    """Split a line that may hold several sentences; a line of one sentence comes back unchanged."""
    line = line.strip()
    if not line:
        return []
    if _ZH_ONE_SENTENCE.fullmatch(line) and not _EN_END.search(line) and not _MAYBE_HALF_WIDTH_END.search(line):
        return [line]
    parts: list[str] = []
    start = 0
    for m in _ZH_END.finditer(line):
        end = m.end()
        if end < len(line):
            parts.append(line[start:end])
            start = end
    parts.append(line[start:])
    out: list[str] = []
    for part in parts:
        pos = 0
        for m in _EN_END.finditer(part):
            out.append(part[pos : m.end(1)])
            pos = m.end()
        out.append(part[pos:])
    return [s.strip() for s in out if s.strip()]


def iter_documents(paths: Iterable[str | Path], read: BytesRead | None = None) -> Iterator[list[str]]:
    """Yield documents as lists of sentences. A blank line, or the end of a file, ends a document. `read`, when
    given, counts the bytes read so far."""
    for path in paths:
        doc: list[str] = []
        for line in read_lines(path, read):
            line = line.strip()
            if not line:
                if doc:
                    yield doc
                doc = []
            else:
                doc.extend(split_sentences(line))
        if doc:
            yield doc
