"""Documents and sentences: a corpus is lines of text with a blank line between documents."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from bertkit.files import read_lines

# Chinese: after 。！？； (and …… or ！？ runs), keeping closing quotes/brackets with the sentence.
_ZH_END = re.compile(r"([。！？；]+|…{1,2})([”’」』）)\]]*)")
# English: . ! ? (plus closing quotes/brackets) followed by white space and something that is not lower case.
_EN_END = re.compile(r"([.!?]+[\"'”’)\]]*)\s+(?=[^a-z\s])")
# A line whose only Chinese end is one final run of end marks and closers (or that has none): `_ZH_END` matches it
# at most once, up to the line's end, so it does not split it. Most lines of a corpus are one sentence; this and
# one search for `_EN_END` decide that in C.
_ZH_ONE_SENTENCE = re.compile(r"[^。！？；…]*(?:(?:[。！？；]+|…{1,2})[”’」』）)\]]*)?")


def split_sentences(line: str) -> list[str]:
    """Split a line that may hold several sentences; a line of one sentence comes back unchanged."""
    line = line.strip()
    if not line:
        return []
    if _ZH_ONE_SENTENCE.fullmatch(line) and not _EN_END.search(line):
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


def iter_documents(paths: Iterable[str | Path]) -> Iterator[list[str]]:
    """Yield documents as lists of sentences. A blank line, or the end of a file, ends a document."""
    for path in paths:
        doc: list[str] = []
        for line in read_lines(path):
            line = line.strip()
            if not line:
                if doc:
                    yield doc
                doc = []
            else:
                doc.extend(split_sentences(line))
        if doc:
            yield doc
