"""Reading labelled task data: what spreadsheet exports and old editors produce reads as intended, and a file that
cannot be read gets one line naming the file, the place and what to do (never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertkit.data.task_files import read_classification, read_conll, read_squad
from bertkit.errors import BertkitError
from bertkit.tasks.classify import ClassificationTask, PairClassificationTask
from bertkit.tasks.ner import NerTask


def _rows(data_dir: Path, name: str, n: int = 12) -> list[str]:
    """The header and the first n rows of a real TSV file, without line ends."""
    return (data_dir / name).read_text(encoding="utf-8").splitlines()[: n + 1]


# ------------------------------------------------------------------------------------------ labels with spaces


def test_labels_with_surrounding_whitespace_are_stripped(tmp_path: Path, data_dir: Path) -> None:
    header, *rows = _rows(data_dir, "chnsenticorp/train.tsv")
    assert {r.rsplit("\t", 1)[1] for r in rows} == {"0", "1"}
    # As a spreadsheet export writes them: a trailing space, a leading space, a tab-free non-breaking space.
    padded = [f"{r.rsplit(chr(9), 1)[0]}\t{pad[0]}{r.rsplit(chr(9), 1)[1]}{pad[1]}"
              for r, pad in zip(rows, [("", " "), (" ", ""), ("", "\u00a0"), ("", "")] * 3, strict=True)]  # fmt: skip
    tsv = tmp_path / "train.tsv"
    tsv.write_text("\n".join([header + " ", *padded]) + "\n", encoding="utf-8")  # "label " in the header too
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r.split("\t")[0], "label": r.split("\t")[1]}) + "\n"
                             for r in padded), encoding="utf-8")  # fmt: skip
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{r.split(chr(9))[0]}",{r.split(chr(9))[1]}\n' for r in padded),
                        encoding="utf-8")  # fmt: skip
    task = ClassificationTask()
    for path in (tsv, jsonl, csv_path):
        examples = task.read(path)
        assert task.labels(examples) == ["0", "1"], path
        assert [ex.label for ex in examples] == [r.rsplit("\t", 1)[1] for r in rows]


def test_conll_tags_with_surrounding_whitespace(tmp_path: Path, data_dir: Path) -> None:
    text = (data_dir / "weibo_ner/train.txt").read_text(encoding="utf-8").split("\n\n")[:5]
    gold = read_conll(data_dir / "weibo_ner/train.txt")[:5]
    padded = "\n\n".join("\n".join(line + " \t" for line in sent.splitlines()) for sent in text) + "\n"
    (tmp_path / "ner.txt").write_text(padded, encoding="utf-8")
    got = read_conll(tmp_path / "ner.txt")
    assert [(s.tokens, s.tags) for s in got] == [(s.tokens, s.tags) for s in gold]
    assert NerTask().labels(got) == NerTask().labels(gold)


def test_an_empty_label_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n很好\t1\n不好\t \n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"train\.tsv:3: the label is empty"):
        read_classification(path)


def test_an_empty_text_is_an_error(tmp_path: Path) -> None:
    # A row with an empty text was scored by evaluate and answered by predict (from [CLS] [SEP] alone), while a JSON
    # request with one is refused.
    for name, content, where in (
        ("train.tsv", "text\tlabel\n很好\t1\n \t0\n", r"train\.tsv:3: the text is empty"),
        ("pairs.csv", "text_a,text_b,label\n好,很好,1\n好,,0\n", r"pairs\.csv:3: the text_b is empty"),
        ("rows.jsonl", '{"text": "好", "label": "1"}\n{"text": "", "label": "0"}\n', r"rows\.jsonl:2: the text is"),
    ):
        (tmp_path / name).write_text(content, encoding="utf-8")
        for labelled in (True, False):
            with pytest.raises(BertkitError, match=where):
                read_classification(tmp_path / name, require_label=labelled)


def test_a_csv_row_is_named_by_its_first_line_and_bmes_tags_get_a_hint(tmp_path: Path) -> None:
    # A quoted CSV record over two lines was reported at its last line; a BMES file's M- tag was refused without
    # saying what to write instead.
    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"two\nlines",\n好,1\n', encoding="utf-8")
    with pytest.raises(BertkitError, match=r"rows\.csv:2: the label is empty"):
        read_classification(path)
    assert [ex.line for ex in read_classification(path, require_label=False)] == [2, 4]
    bmes = tmp_path / "bmes.txt"
    bmes.write_text("张 B-NAME\n三 M-NAME\n丰 E-NAME\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"bmes\.txt:2: label 'M-NAME' is not .*rewrite M- as I-"):
        read_conll(bmes)


# ------------------------------------------------------------------------------------------ line ends


@pytest.mark.parametrize("line_end", ["\r", "\r\n"])
def test_tsv_with_old_mac_or_windows_line_ends(tmp_path: Path, data_dir: Path, line_end: str) -> None:
    lines = _rows(data_dir, "afqmc/train.tsv")
    unix, other = tmp_path / "unix.tsv", tmp_path / "other.tsv"
    unix.write_text("\n".join(lines) + "\n", encoding="utf-8")
    other.write_bytes((line_end.join(lines) + line_end).encode("utf-8"))
    want = PairClassificationTask().read(unix)
    got = PairClassificationTask().read(other)
    assert [(e.text_a, e.text_b, e.label, e.line) for e in got] == [(e.text_a, e.text_b, e.label, e.line) for e in want]
    assert len(got) == len(lines) - 1


def test_conll_and_jsonl_with_old_mac_line_ends(tmp_path: Path, data_dir: Path) -> None:
    sents = (data_dir / "resume_ner/train.txt").read_text(encoding="utf-8").split("\n\n")[:4]
    (tmp_path / "cr.txt").write_bytes("\r\r".join(s.replace("\n", "\r") for s in sents).encode("utf-8"))
    want = read_conll(data_dir / "resume_ner/train.txt")[:4]
    got = read_conll(tmp_path / "cr.txt")
    assert [(s.tokens, s.tags) for s in got] == [(s.tokens, s.tags) for s in want]
    _, *rows = _rows(data_dir, "sst2/train.tsv", 5)
    objs = [json.dumps({"text": r.split("\t")[0], "label": r.split("\t")[1]}) for r in rows]
    (tmp_path / "cr.jsonl").write_bytes("\r".join(objs).encode("utf-8"))
    assert [ex.text_a for ex in read_classification(tmp_path / "cr.jsonl")] == [r.split("\t")[0] for r in rows]


# ------------------------------------------------------------------------------------------ header and delimiter


def test_tsv_without_header_says_the_first_line_must_be_one(tmp_path: Path, data_dir: Path) -> None:
    _, *rows = _rows(data_dir, "chnsenticorp/train.tsv", 3)
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(BertkitError) as e:
        read_classification(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "first line must be a header" in msg and "text<TAB>label" in msg
    assert repr(rows[0])[:30] in msg  # shows what it found
    path.write_text("Text\tLabel\n好\t1\n", encoding="utf-8")  # a spreadsheet's capitalised names
    with pytest.raises(BertkitError, match="its names are lower-case: 'text', not 'Text'"):
        read_classification(path)


def test_header_without_label_column(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("text\tstars\n很好\t1\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"no 'label' column.*'stars'"):
        read_classification(path)
    assert [ex.label for ex in read_classification(path, require_label=False)] == [None]  # prediction input


def test_tab_separated_file_named_csv_says_the_extension_picks_the_delimiter(tmp_path: Path, data_dir: Path) -> None:
    lines = _rows(data_dir, "sst2/train.tsv", 6)
    assert any("," in line for line in lines)  # a comma in the text: 2 columns where the header has 1
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BertkitError) as e:
        read_classification(path)
    msg = str(e.value)
    assert ".csv is read as comma-separated" in msg and ".tsv as tab-separated" in msg and "rename" in msg
    assert "train.tsv" in msg  # the suggested name
    # ... and the other way round: a comma-separated file named .tsv
    comma = tmp_path / "data.tsv"
    comma.write_text("text,label\ngood,1\nbad,0\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"\.tsv as tab-separated; rename it to data\.csv"):
        read_classification(comma)


def test_column_count_mismatch_names_line(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n好\t1\n有\ttab\t0\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"train\.tsv:3: 3 columns, but the header has 2"):
        read_classification(path)
    path.write_text("text\tlabel\n好\t1\n没有标签\n", encoding="utf-8")  # a label left out
    with pytest.raises(BertkitError, match=r"train\.tsv:3: 1 column, but the header has 2"):
        read_classification(path)


# ------------------------------------------------------------------------------------------ SQuAD fields


def _squad(data_dir: Path) -> dict:
    squad = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    squad["data"] = [dict(article, paragraphs=article["paragraphs"][:2]) for article in squad["data"][:2]]
    return squad


def _damage(squad: dict, what: str) -> tuple[dict, str]:
    """Damage the second question of the second paragraph of the second article; the expected message part."""
    qa = squad["data"][1]["paragraphs"][1]["qas"][1]
    qid = qa["id"]
    at = r"data\[1\]\.paragraphs\[1\]\.qas\[1\]"
    if what == "context":
        del squad["data"][1]["paragraphs"][1]["context"]
        return squad, r"data\[1\]\.paragraphs\[1\]: no 'context' field; add it, or remove this entry"
    if what == "id":
        del qa["id"]
        return squad, at + r": no 'id' field"
    if what == "question":
        del qa["question"]
        return squad, at + rf" \(id '{qid}'\): no 'question' field"
    if what == "answer_start":
        qa["answers"][0]["answer_start"] = "abc"
        return squad, at + rf" \(id '{qid}'\): answers\[0\]\.answer_start must be a whole number.*'abc'"
    if what == "answer_start 3.5":
        qa["answers"][0]["answer_start"] = 3.5
        return squad, at + rf" \(id '{qid}'\): answers\[0\]\.answer_start must be a whole number.*3\.5"
    if what == "answers":
        qa["answers"] = {"text": "x"}
        return squad, at + rf" \(id '{qid}'\): 'answers' must be a list"
    if what == "paragraphs":
        squad["data"][1]["paragraphs"] = "text"
        return squad, r"data\[1\]: 'paragraphs' must be a list"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what", ["context", "id", "question", "answer_start", "answer_start 3.5", "answers", "paragraphs"]
)
def test_squad_with_a_missing_or_wrong_field_names_file_place_and_field(
    tmp_path: Path, data_dir: Path, what: str
) -> None:
    squad, expected = _damage(_squad(data_dir), what)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(BertkitError, match=rf"^{path}: {expected}") as e:
        read_squad(path, relocate_answers=True)
    assert "\n" not in str(e.value)


def test_squad_real_files_still_read(data_dir: Path) -> None:
    examples = read_squad(data_dir / "squad_v1.1/dev-v1.1.json")
    assert len(examples) == 10570
    assert all(ex.context[s : s + len(t)] == t for ex in examples for t, s in ex.answers)


def test_squad_not_json_or_not_squad(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(BertkitError, match=r"x\.json: not valid JSON .*line 1"):
        read_squad(path)
    path.write_text('[{"context": "x"}]', encoding="utf-8")
    with pytest.raises(BertkitError, match=r'x\.json: not SQuAD JSON: expected an object with a "data" list'):
        read_squad(path)


def test_prediction_inputs_with_old_mac_line_ends(tmp_path: Path, data_dir: Path) -> None:
    from bertkit.tasks.qa import QaTask

    texts = ["".join(s.tokens) for s in read_conll(data_dir / "weibo_ner/dev.txt")[:3]]
    (tmp_path / "ner.txt").write_bytes("\r".join(texts).encode("utf-8"))
    assert ["".join(s.tokens) for s in NerTask().read(tmp_path / "ner.txt", labelled=False)] == [
        t.replace(" ", "") for t in texts
    ]
    squad = read_squad(data_dir / "cmrc2018/train.json", relocate_answers=True)[:3]
    rows = [json.dumps({"id": ex.id, "question": ex.question, "context": ex.context}) for ex in squad]
    (tmp_path / "qa.jsonl").write_bytes("\r".join(rows).encode("utf-8"))
    assert [ex.id for ex in QaTask().read(tmp_path / "qa.jsonl", labelled=False)] == [ex.id for ex in squad]


@pytest.mark.parametrize("header", ["text\ttext\tlabel", "text\tlabel\tlabel"])
def test_a_column_named_twice_is_an_error(tmp_path: Path, header: str) -> None:
    # The row's last column of that name was used, silently (`text\ttext` classified the second text).
    data = tmp_path / "dup.tsv"
    data.write_text(f"{header}\n好\t差\t1\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"dup.tsv:1: the header names the column '(text|label)' twice"):
        read_classification(data)
