"""The task registry and `open_model_dir`: every task family's facts in one class, every model directory opened as
what it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bertkit import BertConfig, BertkitError, BertModel, Tokenizer
from bertkit.model import BertForPreTraining
from bertkit.tasks.model_dir import TASK_FILE, fine_tuned_task, open_model_dir, open_task_model
from bertkit.tasks.registry import TASKS, task_class, task_for_architecture


def test_every_family_states_its_facts() -> None:
    assert list(TASKS) == ["cls", "pair", "regression", "multilabel", "ner", "qa"]
    for name, task in TASKS.items():
        assert task.name == name
        assert task.main_metric and task.head and task.input_schema.startswith("{")
        assert task.curve_scores[0] == task.main_metric  # curves.png draws the metric that picks the model
        assert task.model_class.hf_architecture.startswith("BertFor")
        assert task.default_settings().max_seq_length == task.default_max_seq_length
    assert TASKS["qa"].default_max_seq_length == 384 and TASKS["cls"].default_max_seq_length == 128
    assert TASKS["cls"].head == TASKS["pair"].head != TASKS["regression"].head != TASKS["multilabel"].head
    with pytest.raises(BertkitError, match="unknown task 'nli'; choose one of cls, pair, regression, multilabel, ner"):
        task_class("nli")


@pytest.mark.parametrize(
    ("architecture", "num_labels", "problem_type", "task"),
    [
        ("BertForSequenceClassification", None, None, "cls"),  # transformers' default: two labels
        ("BertForSequenceClassification", 3, None, "cls"),
        ("BertForSequenceClassification", 1, None, "regression"),  # one output is a regression, as in transformers
        ("BertForSequenceClassification", 2, "regression", "regression"),
        ("BertForSequenceClassification", 5, "multi_label_classification", "multilabel"),
        ("BertForTokenClassification", 9, None, "ner"),
        ("BertForQuestionAnswering", None, None, "qa"),
        ("BertForPreTraining", None, None, None),
        ("BertModel", None, None, None),
        ("", None, None, None),
    ],
)
def test_task_of_a_hugging_face_architecture(architecture, num_labels, problem_type, task) -> None:
    assert task_for_architecture(architecture, num_labels, problem_type) == task


def test_open_model_dir_opens_each_kind(tiny_task_models: dict[str, Path], tmp_path: Path) -> None:
    pretrained = open_model_dir(tiny_task_models["pretrained"])
    assert pretrained.kind == "pretrained" and isinstance(pretrained.model, BertForPreTraining)
    assert pretrained.encoder is pretrained.mlm.bert and pretrained.task_model is None
    for name in ("cls", "ner", "qa"):
        opened = open_model_dir(tiny_task_models[name])
        assert opened.kind == "task" and opened.task_model.task.name == name and opened.mlm is None
        assert opened.model is opened.task_model.model and opened.encoder is opened.model.bert
        assert isinstance(opened.model, TASKS[name].model_class)
    # An encoder saved without its pooler opens without one: no freshly initialised output.
    torch.manual_seed(0)
    config = BertConfig.load(tiny_task_models["pretrained"])
    BertModel(config, add_pooler=False).save_pretrained(tmp_path / "enc")
    Tokenizer.from_pretrained(tiny_task_models["pretrained"]).save_pretrained(tmp_path / "enc")
    opened = open_model_dir(tmp_path / "enc")
    assert opened.kind == "encoder" and opened.encoder.pooler is None and fine_tuned_task(tmp_path / "enc") is None
    with pytest.raises(BertkitError, match="does not exist"):
        open_model_dir(tmp_path / "missing")


@pytest.mark.parametrize("task", ["cls", "ner", "qa"])
def test_prediction_in_chunks_gives_every_answer_in_order(
    task: str, tiny_task_models: dict[str, Path], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`predict_iter` (what `bertkit predict` streams) answers a few examples at a time so that memory stays flat:
    the same answers, in the same order, as all examples at once (within float32 rounding: an example's batch
    companions change its padding), and the long inputs of every chunk counted."""
    import bertkit.tasks.model_dir
    from bertkit.tasks.model_dir import open_task_model

    files = {"cls": "chnsenticorp/dev.tsv", "ner": "cluener2020/dev.txt", "qa": "cmrc2018/dev.json"}
    tm = open_task_model(tiny_task_models[task], "cpu")
    examples = tm.task.read(data_dir / files[task])[:45]
    if task != "qa":  # some inputs longer than the model's max_seq_length, counted in every chunk
        tm.task.settings.max_seq_length = 24
    whole = tm.predict(examples)
    cut = tm.task.cut_inputs
    monkeypatch.setattr(bertkit.tasks.model_dir, "INFERENCE_CHUNK", 7)
    chunked = list(tm.predict_iter(examples))
    assert len(chunked) == len(whole) == 45 and tm.task.cut_inputs == cut
    assert task == "qa" or cut > 0
    for a, b in zip(whole, chunked, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "probabilities":
                assert all(abs(a[key][k] - b[key][k]) < 1e-5 for k in a[key])
            elif key == "entities":
                assert [(e["type"], e["start"], e["end"]) for e in a[key]] == [
                    (e["type"], e["start"], e["end"]) for e in b[key]
                ]
            elif key != "score":
                assert a[key] == b[key], key


def test_open_task_model_checks_the_head(tiny_task_models: dict[str, Path]) -> None:
    cls = tiny_task_models["cls"]
    assert (cls / TASK_FILE).is_file()
    # The same head, but a model that learnt from single texts cannot judge pairs (evaluate --task pair on it gave
    # an accuracy, exit 0); the other way round a pair classifier may read single texts.
    with pytest.raises(BertkitError, match="fine-tuned on single texts \\('cls'\\): it cannot judge text pairs"):
        open_task_model(cls, task="pair")
    assert open_task_model(cls, task="cls").task.name == "cls"
    with pytest.raises(BertkitError, match="was fine-tuned for 'cls', not 'ner'"):
        open_task_model(cls, task="ner")
    with pytest.raises(BertkitError, match="not a fine-tuned task model"):
        open_task_model(tiny_task_models["pretrained"])
    with pytest.raises(BertkitError, match="unknown task 'foo'; choose one of cls, pair"):  # was a KeyError
        open_task_model(cls, task="foo")
    with pytest.raises(BertkitError, match="unknown task 'foo'"):
        open_model_dir(cls, task="foo")
    with pytest.raises(TypeError):  # the task by keyword only: a device in its place was taken for a task name
        open_task_model(cls, None, "cpu")  # type: ignore[misc]
    with pytest.raises(BertkitError, match=r"device 'pair' is not a device .*; a task is given by keyword: task="):
        open_model_dir(cls, "pair")  # as the task was given before
    with pytest.raises(BertkitError, match=r"device 'gpu' is not a device \(cpu, cuda or cuda:N\)$"):
        open_task_model(cls, "gpu")


def test_a_bad_task_setting_names_its_file(tiny_task_models: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "cls"
    shutil.copytree(tiny_task_models["cls"], copy)
    record = json.loads((copy / TASK_FILE).read_text(encoding="utf-8"))
    record["settings"]["max_seq_length"] = "32"
    (copy / TASK_FILE).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(BertkitError, match=f"{TASK_FILE}: settings: max_seq_length must be a number, got the string"):
        open_task_model(copy)


@pytest.mark.parametrize("task", ["cls", "ner", "qa"])
def test_a_task_model_takes_its_examples_only_and_scores_labelled_ones(
    task: str, tiny_task_models: dict[str, Path], data_dir: Path
) -> None:
    """A dict or a text where an example belongs was an AttributeError deep in the task's encoding, and evaluate
    scored an example without its label as a wrong answer (accuracy 0.0 over unlabelled examples)."""
    tm = open_task_model(tiny_task_models[task], "cpu")
    row = {"question": "谁？", "context": "叶老桂在北京。"} if task == "qa" else {"text": "叶老桂在北京。"}
    unlabelled = tm.task.from_json(row)
    assert len(tm.predict([unlabelled])) == 1
    features = tm.features([unlabelled])  # made by the caller already (as the server does): the same answer
    assert tm.predict([unlabelled], features=features) == tm.predict([unlabelled])
    with pytest.raises(BertkitError, match="features: expected those of the 2 examples given"):
        tm.predict([unlabelled, unlabelled], features=features)
    for bad in ([row], [row["context" if task == "qa" else "text"]], row, "叶老桂"):
        with pytest.raises(BertkitError, match=r"examples(\[0\] is a| must be a list of) "):
            tm.predict(bad)  # type: ignore[arg-type]
    files = {"cls": "chnsenticorp/dev.tsv", "ner": "cluener2020/dev.txt", "qa": "cmrc2018/dev.json"}
    labelled = tm.task.read(data_dir / files[task])[:3]
    assert set(tm.evaluate(labelled, files[task])) >= {tm.task.main_metric}
    if task == "qa":  # a question without answers is one the passage does not answer (SQuAD v2 files say so too)
        assert tm.evaluate([*labelled, unlabelled], "mine")["questions"] == 4
        return
    with pytest.raises(BertkitError, match=r"examples\[3\] has no label, and evaluate scores against labels"):
        tm.evaluate([*labelled, unlabelled], "mine")


@pytest.mark.parametrize("name", ["cls", "regression", "multilabel"])
def test_a_text_b_is_refused_by_a_model_that_reads_one_text(name: str, tmp_path: Path) -> None:
    # `finetune --task cls` on pair data trained, evaluated and predicted on text_a alone, exit 0 and no word.
    task = task_class(name)()
    label = {"cls": "1", "regression": "0.5", "multilabel": "a"}[name]
    singles, pairs = tmp_path / "singles.tsv", tmp_path / "pairs.tsv"
    singles.write_text(f"text\tlabel\n好。\t{label}\n", encoding="utf-8")
    pairs.write_text(f"text_a\ttext_b\tlabel\n好。\t坏。\t{label}\n", encoding="utf-8")
    if name != "cls":  # these learn from their training data whether they read pairs
        task.labels(task.read(singles))
    with pytest.raises(BertkitError, match=rf"pairs.tsv:2: a text_b, which this {name} model does not read"):
        task.read(pairs)
    with pytest.raises(BertkitError, match="a text_b, which"):
        task.from_json({"text": "好。", "text_b": "坏。"})
    assert task.from_json({"text": "好。"}).text_b is None
    with pytest.raises(BertkitError, match="'text_a' and 'text' are two names for one field"):
        task.from_json({"text": "好。", "text_a": "坏。"})  # which one is read would be a silent guess


def test_ner_prediction_reads_a_conll_file_of_any_name_as_conll(tmp_path: Path) -> None:
    # `predict` on a CoNLL file named .txt (as the shared NER sets are) read every `token tag` line as a sentence,
    # while finetune and evaluate read the same file as CoNLL; exit 0.
    task = task_class("ner")()
    conll = tmp_path / "dev.txt"
    conll.write_text("-DOCSTART- O\n\n张 B-PER\n三 I-PER\n来 O\n\n北 B-LOC\n京 I-LOC\n", encoding="utf-8")
    sentences = task.read_for_prediction(conll)
    assert [s.tokens for s in sentences] == [["张", "三", "来"], ["北", "京"]]
    assert [s.tokens for s in task.read_for_prediction(conll)] == [s.tokens for s in task.read(conll)]
    plain = tmp_path / "text.txt"
    plain.write_text("张三来北京。\nHe said O\n", encoding="utf-8")  # a plain line may end in a word like "O"
    assert len(task.read_for_prediction(plain)) == 2 and getattr(task.read_for_prediction(plain)[0], "text", None)


def test_a_conll_sentence_is_echoed_as_text_its_entities_point_into() -> None:
    # A Chinese CoNLL file's predictions echoed "张 三 来 北 京", and entities such as "张 三".
    from bertkit.data.task_files import TaggedSentence
    from bertkit.tasks.ner import text_and_spans

    words = ["张", "三", "在", "New", "York", "住", "了", "2026", "年", "。"]
    text, spans = text_and_spans(TaggedSentence(words, None))
    assert text == "张三在New York住了2026年。"
    assert [text[a:b] for a, b in spans] == words


@pytest.mark.parametrize(
    ("name", "line", "tabs"),
    [
        ("cls", "1\t这家酒店太差了", 1),
        ("pair", "花呗怎么还款", 0),
        ("pair", "a\tb\tc", 2),
        ("regression", "a\tb\tc", 2),
    ],
)
def test_plain_prediction_lines_with_the_wrong_number_of_tabs_are_refused(
    name: str, line: str, tabs: int, tmp_path: Path
) -> None:
    # A cls model classified "1" (the text before the tab), a pair model read a line without a tab as text_b "",
    # exit 0.
    task = task_class(name)()
    lines = tmp_path / "in.txt"
    lines.write_text(f"一句话\t另一句\n{line}\n" if name == "pair" else f"一句话\n{line}\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=rf"in.txt:2: {tabs} tab\(s\); this {name} model reads"):
        task.read_for_prediction(lines)
    lines.write_text("一句话\t另一句\n" if name == "pair" else "一句话\n", encoding="utf-8")
    assert len(task.read_for_prediction(lines)) == 1
    # Old Mac line ends (a CR alone): lines, as task files read them, not one long text.
    row = "一句话\t另一句" if name == "pair" else "一句话"
    lines.write_bytes(f"{row}\r{row}\r{row}\r".encode())
    assert [e.line for e in task.read_for_prediction(lines)] == [1, 2, 3]


@pytest.mark.parametrize("other", ["1.0", "01", "１"])
def test_one_number_written_two_ways_is_not_two_classes(other: str, tmp_path: Path) -> None:
    # `1` and `1.0` (or `01`, a full-width `１`) became two classes of a cls model, exit 0.
    task = task_class("cls")()
    data = tmp_path / "train.tsv"
    data.write_text(f"text\tlabel\n好\t1\n差\t0\n也好\t{other}\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=rf"labels '1' \(.*train.tsv:2\) and '{other}' \(.*train.tsv:4\) are one"):
        task.labels(task.read(data))
    data.write_text("text\tlabel\n好\t1\n差\t0\n也好\t1\n", encoding="utf-8")
    assert task.labels(task.read(data)) == ["0", "1"]


def test_ner_cuts_raw_text_into_the_words_its_training_data_had(tmp_path: Path) -> None:
    # An English tagger given "Barack Obama visited 北京" tagged it letter by letter (any Chinese character made
    # the whole line characters), exit 0.
    from bertkit.data.task_files import TaggedSentence
    from bertkit.tasks.ner import words_of

    english, chinese = task_class("ner")(), task_class("ner")()
    words = ["Barack", "Obama", "visited", "Beijing", "."]
    english.labels([TaggedSentence(words, ["B-PER", "I-PER", "O", "B-LOC", "O"], 1)])
    chinese.labels([TaggedSentence(list("张三在iPhone上"), ["B-PER", "I-PER", *["O"] * 8], 1)])
    assert english.settings.char_words is False and chinese.settings.char_words is True
    text = "Barack Obama visited 北京, iPhone很好"
    words, spans = words_of(text, char_words=False)
    assert words == ["Barack", "Obama", "visited", "北", "京", ",", "iPhone", "很", "好"]
    assert [text[s:e] for s, e in spans] == words and english.from_json({"text": text}).tokens == words
    assert chinese.from_json({"text": text}).tokens == [ch for ch in text if not ch.isspace()]
    # Punctuation is a word of its own in tagged corpora: "Seattle." was one word (tagged LOC as "Seattle."), and
    # "Microsoft (Seattle)" one entity.
    text = "He works for Microsoft (Seattle) in the U.S. now... O'Neil paid 3.5 dollars."
    assert english.from_json({"text": text}).tokens == [
        "He", "works", "for", "Microsoft", "(", "Seattle", ")", "in", "the", "U.S.", "now", "...", "O'Neil", "paid",
        "3.5", "dollars", ".",
    ]  # fmt: skip
    assert words_of("Barack Obama", None)[0] == ["Barack", "Obama"]  # not known: by whether the text holds Chinese
    assert words_of("在北京", None)[0] == ["在", "北", "京"]


@pytest.mark.parametrize("text", ["\u200b", "\x01\x02", "\ufeff\u200b\u200d"])
def test_a_text_of_nothing_the_model_reads_is_refused(text: str) -> None:
    # Zero-width or control characters alone tokenize to [CLS] [SEP]: a confident label about nothing, 200.
    for name in ("cls", "ner"):
        with pytest.raises(BertkitError, match="holds no text the model reads"):
            task_class(name)().from_json({"text": text})
    assert task_class("cls")().from_json({"text": "\u200b好"}).text_a == "\u200b好"


def test_spans_keep_a_decomposed_accent_with_its_letter() -> None:
    # "e" + U+0301 (NFD "é"): the tokenizer drops the accent, and spans ended at the letter ("e" of "é").
    from bertkit.tasks.base import with_marks
    from bertkit.tasks.ner import words_of

    text = "  e\u0301北京是首都。"
    words, spans = words_of(text, char_words=True)
    assert words[0] == "e\u0301" and spans[0] == (2, 4)
    assert words_of("cafe\u0301 Paris", char_words=False)[0] == ["cafe\u0301", "Paris"]
    assert with_marks(text, 3) == 4 and with_marks(text, 4) == 4 and with_marks("e\u0301", 2) == 2
