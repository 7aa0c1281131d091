"""Deterministic samples of real text from ../shared/data for the parity tests."""

from __future__ import annotations

import csv
from pathlib import Path


def _nonblank(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.open(encoding="utf-8") if line.strip()]


def spread(items: list, n: int) -> list:
    """n items spread evenly over the list (all of them when it is shorter)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def tsv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def corpus_lines(data: Path, lang: str, per_file: int) -> list[str]:
    lines: list[str] = []
    for f in sorted((data / f"pretrain_{lang}").glob("*.txt")):
        lines += spread(_nonblank(f), per_file)
    return lines


def single_texts(data: Path) -> list[str]:
    """About 24,000 real lines: Chinese and English corpora plus sentiment sentences."""
    zh = corpus_lines(data, "zh", 1600)
    zh += [r["text"] for r in spread(tsv_rows(data / "chnsenticorp/train.tsv"), 3000)]
    en = corpus_lines(data, "en", 600)
    en += [r["text"] for r in spread(tsv_rows(data / "sst2/train.tsv"), 3000)]
    return zh + en


def pair_texts(data: Path) -> list[tuple[str, str]]:
    """About 9,000 real pairs: AFQMC and MRPC pairs, and consecutive corpus lines (long pairs that truncate)."""
    pairs = [(r["text_a"], r["text_b"]) for r in spread(tsv_rows(data / "afqmc/train.tsv"), 3000)]
    pairs += [(r["text_a"], r["text_b"]) for r in tsv_rows(data / "mrpc/train.tsv")[:2000]]
    for lang, per_file in (("zh", 400), ("en", 150)):
        lines = corpus_lines(data, lang, per_file * 2)
        pairs += list(zip(lines[0::2], lines[1::2], strict=False))
    return pairs
