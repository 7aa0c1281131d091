"""Readers for labelled data: classification TSV/CSV/JSONL, CoNLL columns, SQuAD JSON.

Every error names the file and the line (or the question id for SQuAD) and says what is wrong.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from bertkit.errors import BertkitError, shown
from bertkit.files import read_input_lines, read_lines


@dataclass
class TextExample:
    """One classification example: a text (or a text pair), its label, and its file and line."""

    text_a: str
    text_b: str | None
    label: str | None  # None when reading unlabelled input for prediction
    line: int = 0
    source: str = ""  # the file it was read from, for messages that point at it


@dataclass
class TaggedSentence:
    """One NER sentence: its tokens (words or Chinese characters) and their tags (None if unlabelled)."""

    tokens: list[str]  # words (English) or characters (Chinese)
    tags: list[str] | None
    line: int = 0
    path: str = ""  # the file it was read from (for errors that name it)


@dataclass
class QAExample:
    """One question over its passage: gold answers as (text, character start); SQuAD v2's is_impossible."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, character start)
    is_impossible: bool = False
    misplaced: str = ""  # read with relocate_answers: what was wrong with the first answer not at its answer_start


# ---------------------------------------------------------------------------------------------- lines


def numbered_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, split as `read_input_lines` splits it (a CR alone ends a line)."""
    return list(enumerate(read_input_lines(path), start=1))


# ---------------------------------------------------------------------------------------------- classification

TEXT_COLUMNS = ("text_a", "text", "sentence")  # the first column present holds the (first) text
_DELIMITERS = {".csv": (",", "comma-separated"), ".tsv": ("\t", "tab-separated")}


def read_classification(path: str | Path, require_label: bool = True, multilabel: bool = False) -> list[TextExample]:
    """Rows with `text` (or `text_a`, `text_b`) and `label`; the format follows the extension (.csv comma-separated,
    .jsonl JSON lines, anything else tab-separated). Labels are stripped of surrounding white space, so `1 ` from a
    spreadsheet export is the label `1`.

    `multilabel`: a label is a set of labels, written `a|b|c` (a JSON list in JSON lines), kept as `a|b|c`; an empty
    label (or list) is the empty set, a valid training example."""
    path = Path(path)
    lines = numbered_lines(path)
    rows = (
        json_object_lines(path, lines, "a JSON object with text and label")
        if path.suffix.lower() in (".jsonl", ".json")
        else _delimited_rows(path, lines, require_label)
    )
    out = []
    for n, row in rows:
        text_a = next((row[k] for k in TEXT_COLUMNS if row.get(k) is not None), None)
        if text_a is None:
            raise BertkitError(f"{path}:{n}: no 'text' (or 'text_a') field; found {sorted(row)}")
        label = _label(row.get("label"), multilabel, f"{path}:{n}")
        if require_label and label is None:
            raise BertkitError(f"{path}:{n}: no 'label' field; found {sorted(row)}")
        if require_label and not label and not multilabel:
            raise BertkitError(f"{path}:{n}: the label is empty; give every training or evaluation row a label")
        text_b = row.get("text_b")
        for name, text in (("text", text_a), ("text_b", text_b)):
            if text is not None and not str(text).strip():  # the model would answer from [CLS] [SEP] alone
                raise BertkitError(f"{path}:{n}: the {name} is empty; give the row a text or remove it")
        kept = label if multilabel else label or None
        out.append(TextExample(str(text_a), None if text_b is None else str(text_b), kept, n, str(path)))
    if not out:
        raise BertkitError(f"{path}: no examples")
    return out


LABEL_SEPARATOR = "|"  # between the labels of one multi-label example: `sports|politics`


def _label(value: object, multilabel: bool, where: str) -> str | None:
    """A row's label as text (None when the row has none). A JSON list is a multi-label example's labels, joined
    by LABEL_SEPARATOR; elsewhere a list is an error that names the multi-label task."""
    if value is None:
        return None
    if isinstance(value, list):
        if not multilabel:
            raise BertkitError(f"{where}: the label is a list ({_short(value)}): for multi-label data pass "
                               "--task multilabel")  # fmt: skip
        bad = next((v for v in value if not isinstance(v, str) or not v.strip() or LABEL_SEPARATOR in v), None)
        if bad is not None or len(value) != len(set(value)):
            why = f"{_short(bad)} is not a non-empty string without {LABEL_SEPARATOR!r}" if bad is not None else (
                "a label is listed twice")  # fmt: skip
            raise BertkitError(f"{where}: labels must be a list of distinct names: {why}")
        return LABEL_SEPARATOR.join(v.strip() for v in value)
    return str(value).strip()


def json_object_lines(path: Path, lines: list[tuple[int, str]], expected: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON-lines file; a line that is not a JSON object is one
    error naming the file, the line and what was `expected` there."""
    rows = []
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BertkitError(f"{path}:{n}: not {expected} ({e.msg})") from None
        if not isinstance(obj, dict):
            raise BertkitError(f"{path}:{n}: expected {expected}, got {obj!r}")
        rows.append((n, obj))
    return rows


def _delimited_rows(path: Path, lines: list[tuple[int, str]], require_label: bool) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    delimiter, kind = _DELIMITERS.get(suffix, _DELIMITERS[".tsv"])
    quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
    # Feed csv the lines with \n ends, so that its line_num is the file's line number (a quoted CSV field may span
    # lines); blank lines give empty rows, which are skipped.
    reader = csv.reader((line + "\n" for _, line in lines), delimiter=delimiter, quoting=quoting)
    try:
        header = next((values for values in reader if values), None)
        if header is None:
            raise BertkitError(f"{path}: empty file (expected a header such as {_example_header(delimiter)})")
        header_line, first = reader.line_num, lines[reader.line_num - 1][1]
        header = [name.strip() for name in header]
        twice = next((name for i, name in enumerate(header) if name and name in header[:i]), None)
        if twice is not None:  # a dict of the row would keep the last of them, unsaid
            raise BertkitError(f"{path}:{header_line}: the header names the column {twice!r} twice ({header}); "
                               "name each column once")  # fmt: skip
        if not any(k in header for k in TEXT_COLUMNS):
            _check_delimiter(path, first, header)
            cased = [name for name in header if name.lower() in TEXT_COLUMNS]
            found = (
                f"its names are lower-case: {cased[0].lower()!r}, not {cased[0]!r}"
                if cased
                else f"found {shown(first)}"
            )
            raise BertkitError(
                f"{path}:{header_line}: the first line must be a header naming the columns, e.g. "
                f"{_example_header(delimiter)} (or text_a, text_b and label for pairs); {found}"
            )
        rows, end = [], reader.line_num
        for values in reader:
            n, end = end + 1, reader.line_num  # the row's first line: a quoted field may span several
            if not values:
                continue
            if len(values) != len(header):
                _check_delimiter(path, lines[n - 1][1], header)
                tab = " (a TSV field cannot hold a tab)" if delimiter == "\t" and len(values) > len(header) else ""
                raise BertkitError(
                    f"{path}:{n}: {len(values)} column{'s' * (len(values) != 1)}, but the header has {len(header)}: "
                    f"{header}{tab}"
                )
            rows.append((n, dict(zip(header, values, strict=True))))
    except csv.Error as e:
        raise BertkitError(f"{path}:{reader.line_num}: not {kind} text ({e})") from None
    if require_label and "label" not in header:
        raise BertkitError(
            f"{path}:{header_line}: the header has no 'label' column (it names {header}); "
            f"name the label column 'label', e.g. {_example_header(delimiter)}"
        )
    return rows


def _example_header(delimiter: str) -> str:
    return "text,label" if delimiter == "," else "text<TAB>label"


def _check_delimiter(path: Path, line: str, header: list[str]) -> None:
    """Raise when the file looks separated by the other delimiter than its extension picks: a tab-separated .csv
    or a comma-separated .tsv reads as one column."""
    suffix = path.suffix.lower()
    delimiter = _DELIMITERS.get(suffix, _DELIMITERS[".tsv"])[0]
    other = "\t" if delimiter == "," else ","
    if len(header) == 1 and other in line and delimiter not in line:
        rename = path.with_suffix(".tsv" if other == "\t" else ".csv").name
        found, missing = ("tabs", "commas") if other == "\t" else ("commas", "tabs")
        raise BertkitError(
            f"{path}: its lines hold {found} and no {missing}, but the extension picks the delimiter: .csv is read as "
            f"comma-separated and .tsv as tab-separated; rename it to {rename}"
        )


# ---------------------------------------------------------------------------------------------- CoNLL


def _is_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-")


def looks_like_conll(path: str | Path, probe: int = 200) -> bool:
    """Whether a file of any name is laid out as CoNLL (`token label` per line): its first `probe` non-blank lines
    (at least two) each end in an O or B-/I-/E-/S-TYPE label after a token."""
    seen = 0
    for _, line in numbered_lines(Path(path)):
        parts = line.split()
        if not parts or line.startswith("-DOCSTART-"):
            continue
        if len(parts) < 2 or not _is_tag(parts[-1]):
            return False
        seen += 1
        if seen == probe:
            break
    return seen >= 2


def read_conll(path: str | Path, require_tags: bool = True) -> list[TaggedSentence]:
    """`token label` per line (the last column is the label; white space around it is no part of it), a blank line
    between sentences."""
    path = Path(path)
    out: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    for n, line in numbered_lines(path):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                out.append(TaggedSentence(tokens, tags if require_tags else None, start, str(path)))
            tokens, tags, start = [], [], n + 1
            continue
        parts = line.split()
        if require_tags:
            if len(parts) < 2:
                raise BertkitError(f"{path}:{n}: expected 'token label', got {line!r}")
            tag = parts[-1]
            if not _is_tag(tag):
                bmes = "; BMES's M- (inside an entity) is I- here: rewrite M- as I-" if tag.startswith("M-") else ""
                raise BertkitError(f"{path}:{n}: label {tag!r} is not O or B-/I-/E-/S-TYPE{bmes}")
            tags.append(tag)
        tokens.append(parts[0])
    if tokens:
        out.append(TaggedSentence(tokens, tags if require_tags else None, start, str(path)))
    if not out:
        raise BertkitError(f"{path}: no sentences")
    return out


# ---------------------------------------------------------------------------------------------- SQuAD


def read_squad(path: str | Path, relocate_answers: bool = False) -> list[QAExample]:
    """SQuAD v1.1/v2.0 JSON. An answer whose text is not at its `answer_start` is an error, unless
    `relocate_answers`, which moves it to the occurrence of its text nearest to the given offset (the error it
    would have been is kept in the example's `misplaced`); an answer whose text is nowhere in its passage then keeps
    start -1: scored against, never trained on.

    A missing or mistyped field is an error naming the file, the place (data[a].paragraphs[p].qas[q]) and the field.
    """
    path = Path(path)
    try:
        doc = json.loads("\n".join(read_lines(path)))
    except json.JSONDecodeError as e:
        raise BertkitError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise BertkitError(f'{path}: not SQuAD JSON: expected an object with a "data" list of articles')
    out: list[QAExample] = []
    for a, article in enumerate(doc["data"]):
        where = f"{path}: data[{a}]"
        for p, para in enumerate(_field(_object(article, where), "paragraphs", list, where, default=[])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            para = _object(para, where)
            context = _field(para, "context", str, where)
            for q, qa in enumerate(_field(para, "qas", list, where, default=[])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                qa = _object(qa, where)
                qid = str(_field(qa, "id", (str, int), where))
                where += f" (id {qid!r})"
                question = _field(qa, "question", str, where)
                answers, misplaced = [], ""
                for i, ans in enumerate(_field(qa, "answers", list, where, default=[])):
                    ans = _object(ans, f"{where}: answers[{i}]")
                    text = _field(ans, "text", str, f"{where}: answers[{i}]")
                    start = _offset(ans.get("answer_start"), f"{where}: answers[{i}].answer_start")
                    if context[start : start + len(text)] != text:
                        found = _nearest(context, text, start)
                        hint = "nearest occurrence" if found >= 0 else "text for scoring only (not in the passage)"
                        misplaced = misplaced or (
                            f"{where}: answer {shown(text)} is not at answer_start {start}; pass --relocate-answers "
                            f"to use its {hint}"
                        )
                        if not relocate_answers:
                            raise BertkitError(misplaced)
                        start = found
                    answers.append((text, start))
                out.append(QAExample(qid, question, context, answers, bool(qa.get("is_impossible")), misplaced))
    if not out:
        raise BertkitError(f"{path}: no questions")
    return out


_MISSING = object()
# What each SQuAD entry holds, for the errors about one that does not.
_SQUAD_SHAPE = (
    "SQuAD: data[].paragraphs[] hold context and qas[]; each of qas has id, question and answers[] of text and "
    "answer_start"
)
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", (str, int): "a string or a number"}


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise BertkitError(f"{where}: expected a JSON object, got {_short(value)}")
    return value


def _field(obj: dict, key: str, kind: type | tuple[type, ...], where: str, default: object = _MISSING):
    """`obj[key]`, checked to be of `kind`; a missing key gives `default`, or an error naming `where` and `key`."""
    if key not in obj:
        if default is _MISSING:
            raise BertkitError(f"{where}: no {key!r} field; add it, or remove this entry ({_SQUAD_SHAPE})")
        return default
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BertkitError(
            f"{where}: {key!r} must be {_TYPE_NAMES[kind]}, got {_short(value)}; fix it ({_SQUAD_SHAPE})"
        )
    return value


def _offset(value: object, where: str) -> int:
    """A character offset: a whole number (also when written as "12" or 12.0, as some converters do). A negative one
    (-1: the text is not in the passage) is kept; it matches nowhere, so it is an error or relocated, as any."""
    whole_text = isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value) is not None
    if whole_text or (isinstance(value, float) and value.is_integer()):
        value = int(value)  # type: ignore[arg-type]
    if not isinstance(value, int) or isinstance(value, bool):
        raise BertkitError(
            f"{where} must be a whole number (the answer's character offset in context), got {_short(value)}; fix "
            "it, or give any number and pass --relocate-answers to find the answer text in the context"
        )
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _nearest(context: str, text: str, start: int) -> int:
    best, pos = -1, context.find(text)
    while pos >= 0 and text:
        if best < 0 or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1)
    return best
