"""Readers for labelled data: classification TSV/CSV/JSONL, CoNLL columns, SQuAD JSON.

Every error names the file and the line (or the question id for SQuAD) and says what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from bertkit.data.corpus import read_lines
from bertkit.errors import BertkitError


@dataclass
class TextExample:
    """One classification example: a text (or a text pair), its label, and its line in the file."""

    text_a: str
    text_b: str | None
    label: str | None  # None when reading unlabelled input for prediction
    line: int = 0


@dataclass
class TaggedSentence:
    """One NER sentence: its tokens (words or Chinese characters) and their tags (None if unlabelled)."""

    tokens: list[str]  # words (English) or characters (Chinese)
    tags: list[str] | None
    line: int = 0


@dataclass
class QAExample:
    """One question over its passage: gold answers as (text, character start); SQuAD v2's is_impossible."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, character start)
    is_impossible: bool = False


# ---------------------------------------------------------------------------------------------- classification


def read_classification(path: str | Path, require_label: bool = True) -> list[TextExample]:
    """Rows with `text` (or `text_a`, `text_b`) and `label`; the format follows the extension (.tsv .csv .jsonl)."""
    path = Path(path)
    lines = list(read_lines(path))
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    if suffix in (".jsonl", ".json"):
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BertkitError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict):
                raise BertkitError(f"{path}:{n}: expected a JSON object with text and label")
            rows.append((n, obj))
    else:
        delimiter = "," if suffix == ".csv" else "\t"
        quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
        reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise BertkitError(f"{path}: empty file (expected a header such as text<TAB>label)")
        for n, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise BertkitError(f"{path}:{n}: {len(values)} columns, but the header has {len(header)}: {header}")
            rows.append((n, dict(zip(header, values, strict=True))))
    out = []
    for n, row in rows:
        text_a = row.get("text_a", row.get("text", row.get("sentence")))
        if text_a is None:
            raise BertkitError(f"{path}:{n}: no text (or text_a) field; found {sorted(row)}")
        label = row.get("label")
        if label is None and require_label:
            raise BertkitError(f"{path}:{n}: no label field")
        out.append(TextExample(str(text_a), row.get("text_b"), None if label is None else str(label), n))
    if not out:
        raise BertkitError(f"{path}: no examples")
    return out


# ---------------------------------------------------------------------------------------------- CoNLL


def read_conll(path: str | Path, require_tags: bool = True) -> list[TaggedSentence]:
    """`token label` per line (the last column is the label), a blank line between sentences."""
    path = Path(path)
    out: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                out.append(TaggedSentence(tokens, tags if require_tags else None, start))
            tokens, tags, start = [], [], n + 1
            continue
        parts = line.split()
        if require_tags:
            if len(parts) < 2:
                raise BertkitError(f"{path}:{n}: expected 'token label', got {line!r}")
            tag = parts[-1]
            if tag != "O" and not (len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-"):
                raise BertkitError(f"{path}:{n}: label {tag!r} is not O or B-/I-/E-/S-TYPE")
            tags.append(tag)
        tokens.append(parts[0])
    if tokens:
        out.append(TaggedSentence(tokens, tags if require_tags else None, start))
    if not out:
        raise BertkitError(f"{path}: no sentences")
    return out


# ---------------------------------------------------------------------------------------------- SQuAD


def read_squad(path: str | Path, relocate_answers: bool = False) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON. An answer whose text is not at its `answer_start` is an error, unless
    `relocate_answers`, which moves it to the occurrence of its text nearest to the given offset; an answer whose
    text is nowhere in its passage then keeps start -1: scored against, never trained on."""
    path = Path(path)
    try:
        data = json.loads("\n".join(read_lines(path)))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BertkitError(f"{path}: not SQuAD JSON ({e})") from None
    out: list[QAExample] = []
    for a, article in enumerate(data):
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para["context"]
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: question {qa.get('id')!r} (data[{a}].paragraphs[{p}].qas[{q}])"
                answers = []
                for ans in qa.get("answers", []):
                    text, start = ans["text"], int(ans["answer_start"])
                    if context[start : start + len(text)] != text:
                        found = _nearest(context, text, start)
                        if not relocate_answers:
                            hint = (
                                "nearest occurrence"
                                if found >= 0
                                else "text for scoring only (it is not in the passage)"
                            )
                            raise BertkitError(
                                f"{where}: answer {text!r} is not at answer_start {start}; pass --relocate-answers to "
                                f"use its {hint}"
                            )
                        start = found
                    answers.append((text, start))
                out.append(QAExample(str(qa["id"]), qa["question"], context, answers, bool(qa.get("is_impossible"))))
    if not out:
        raise BertkitError(f"{path}: no questions")
    return out


def _nearest(context: str, text: str, start: int) -> int:
    best, pos = -1, context.find(text)
    while pos >= 0 and text:
        if best < 0 or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1)
    return best
