"""Multi-label classification (`--task multilabel`): label sets read from `a|b|c` and JSON lists, sigmoid + BCE, the
metrics against scikit-learn, thresholds chosen on dev and saved with the model, predictions above the thresholds,
and a saved directory that transformers loads as a multi-label classifier with the same logits and loss.

The data is real and its labels are not invented: CLUENER2020 sentences, each labelled with the set of entity types
its gold tags contain (possibly none).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit import BertkitError
from bertkit.data.task_files import read_classification, read_conll
from bertkit.metrics import entity_spans, multilabel_scores
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.tasks.model_dir import TASK_FILE, fine_tuned_task, open_task_model
from bertkit.tasks.multilabel import THRESHOLD_GRID, MultiLabelTask, best_threshold, split_labels
from bertkit.tasks.settings import TaskSettings


def entity_type_sets(path: Path, n: int) -> list[tuple[str, str]]:
    """(text, `type|type`) for the first `n` sentences of a CLUENER2020 file: the types its gold entities have."""
    rows = []
    for sent in read_conll(path)[:n]:
        kinds = sorted({kind for kind, _, _ in entity_spans(sent.tags)})
        rows.append(("".join(sent.tokens), "|".join(kinds)))
    return rows


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluener_sets(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multilabel_data")
    return {
        "train": _write(root / "train.tsv", entity_type_sets(data_dir / "cluener2020/train.txt", 96)),
        "dev": _write(root / "dev.tsv", entity_type_sets(data_dir / "cluener2020/dev.txt", 40)),
    }


@pytest.fixture(scope="module")
def multilabel_model(tmp_path_factory, tiny_zh_pretrained: Path, cluener_sets: dict[str, Path]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("multilabel_run") / "model"
    train = finetune_training(max_steps=6, eval_every=3, batch_size=16, learning_rate=1e-3, progress=False)
    cfg = FinetuneConfig(task="multilabel", model=str(tiny_zh_pretrained), train_file=str(cluener_sets["train"]),
                         dev_file=str(cluener_sets["dev"]), out=str(out), train=train,
                         settings=TaskSettings(max_seq_length=64))  # fmt: skip
    return out, run_finetune(cfg)


# ------------------------------------------------------------------------------------------ reading


def test_label_sets_from_tsv_and_json_lines(tmp_path: Path) -> None:
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\n今天\tname|game\n明天\t\n后天\t address \n", encoding="utf-8")
    task = MultiLabelTask()
    assert [split_labels(ex.label) for ex in task.read(tsv)] == [["name", "game"], [], ["address"]]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": []}\n', encoding="utf-8")
    assert [split_labels(ex.label) for ex in task.read(jsonl)] == [["x", "y"], []]
    assert task.labels(task.read(tsv)) == ["address", "game", "name"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": ["x", "x"]}\n', "listed twice"),
        ('{"text": "a", "label": ["x", 3]}\n', "not a non-empty string"),
        ('{"text": "a", "label": ["x|y"]}\n', "without '|'"),
    ],
)
def test_bad_label_lists_are_refused_with_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": ["x"]}\n' + content, encoding="utf-8")
    with pytest.raises(BertkitError, match=rf"d\.jsonl:2: .*{message}"):
        MultiLabelTask().read(path)


def test_empty_part_in_a_label_set_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", [("今天", "a||b")])
    with pytest.raises(BertkitError, match=r"d\.tsv:2: labels 'a\|\|b' must be distinct"):
        MultiLabelTask().read(path)


def test_a_list_label_for_single_label_classification_names_the_task(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": ["x", "y"]}\n', encoding="utf-8")
    with pytest.raises(BertkitError, match="--task multilabel"):
        read_classification(path)


# ------------------------------------------------------------------------------------------ metrics and thresholds

LABELS = ["a", "b", "c", "d"]
label_sets = st.lists(st.sets(st.sampled_from(LABELS)), min_size=1, max_size=12)


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(st.data())
def test_multilabel_scores_equal_scikit_learn(data) -> None:
    from sklearn.metrics import accuracy_score, f1_score, jaccard_score
    from sklearn.preprocessing import MultiLabelBinarizer

    gold = data.draw(label_sets)
    pred = data.draw(st.lists(st.sets(st.sampled_from(LABELS)), min_size=len(gold), max_size=len(gold)))
    ours = multilabel_scores(pred, gold, LABELS)
    binarize = MultiLabelBinarizer(classes=LABELS).fit([LABELS])
    g, p = binarize.transform(gold), binarize.transform(pred)
    # Same counts, a few float operations apart: 1e-12.
    assert ours["micro_f1"] == pytest.approx(f1_score(g, p, average="micro", zero_division=0), abs=1e-12)
    assert ours["macro_f1"] == pytest.approx(f1_score(g, p, average="macro", zero_division=0), abs=1e-12)
    assert ours["accuracy"] == pytest.approx(jaccard_score(g, p, average="samples", zero_division=1), abs=1e-12)
    assert ours["exact_match"] == pytest.approx(accuracy_score(g, p), abs=1e-12)


def test_best_threshold_maximises_f1_and_prefers_one_half_among_equals() -> None:
    probs = torch.tensor([0.9, 0.8, 0.3, 0.2, 0.1])
    gold = torch.tensor([True, True, True, False, False])
    assert best_threshold(probs, gold) == 0.25  # the only F1 of 1: keep 0.3, drop 0.2
    separable = torch.tensor([0.9, 0.1]), torch.tensor([True, False])
    assert best_threshold(*separable) == 0.5  # every t in [0.1, 0.9) gives F1 1: the one nearest one half
    # brute force over the grid
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        p, g = torch.rand(30, generator=gen), torch.rand(30, generator=gen) < 0.4

        def f1(t: float, p: torch.Tensor = p, g: torch.Tensor = g) -> float:
            return multilabel_scores([{"x"} if v > t else set() for v in p], [{"x"} if v else set() for v in g],
                                     ["x"])["micro_f1"]  # fmt: skip

        assert f1(best_threshold(p, g)) == max(f1(t) for t in THRESHOLD_GRID)


# ------------------------------------------------------------------------------------------ fine-tuning and use


def test_finetuning_saves_problem_type_labels_and_thresholds(multilabel_model: tuple[Path, dict]) -> None:
    out, result = multilabel_model
    assert {"micro_f1", "macro_f1", "accuracy", "exact_match", "micro_f1_at_half"} <= set(result["dev"])
    assert all(math.isfinite(v) for v in result["dev"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == result["labels"] and "name" in result["labels"]
    record = json.loads((out / TASK_FILE).read_text())
    assert record["task"] == "multilabel"
    thresholds = record["settings"]["thresholds"]
    assert set(thresholds) == set(result["labels"]) and all(t in THRESHOLD_GRID for t in thresholds.values())
    assert record["settings"]["threshold"] in THRESHOLD_GRID
    assert result["settings"]["thresholds"] == thresholds  # metrics.json says what the saved model decides with


def test_predict_returns_labels_above_their_thresholds_and_evaluate_reproduces_dev(
    multilabel_model: tuple[Path, dict], cluener_sets: dict[str, Path], bertkit
) -> None:
    out, result = multilabel_model
    r = bertkit("predict", "--model", out, "--input", cluener_sets["dev"], "--device", "cpu")
    assert r.status == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    thresholds = json.loads((out / TASK_FILE).read_text())["settings"]["thresholds"]
    assert len(rows) == 40
    for row in rows:
        assert set(row["probabilities"]) == set(thresholds)
        assert row["labels"] == [k for k, p in row["probabilities"].items() if p > thresholds[k]]
    r = bertkit("evaluate", "--model", out, "--data", cluener_sets["dev"], "--device", "cpu")
    assert r.status == 0, r.err
    metrics = json.loads(r.out.splitlines()[-1])
    # The saved model is the best dev one with its dev thresholds: evaluating it gives its dev metrics again (same
    # batches; 1e-6 for float summation order).
    for k, v in result["dev"].items():
        assert metrics[k] == pytest.approx(v, abs=1e-6), k
    gold = [split_labels(line.split("\t")[1]) for line in cluener_sets["dev"].read_text().splitlines()[1:]]
    labels = sorted(thresholds)
    assert metrics["micro_f1"] == pytest.approx(
        multilabel_scores([r["labels"] for r in rows], gold, labels)["micro_f1"], abs=1e-9
    )
    r = bertkit("evaluate", "--model", out, "--data", cluener_sets["dev"], "--task", "cls")
    assert r.status == 2 and "not 'cls'" in r.err


def test_multilabel_model_loads_in_transformers_with_same_logits_and_loss(
    multilabel_model: tuple[Path, dict], cluener_sets: dict[str, Path]
) -> None:
    import transformers

    out, _ = multilabel_model
    ref, info = transformers.BertForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert ref.config.problem_type == "multi_label_classification"
    opened = open_task_model(out, "cpu")
    ours, tok, task = opened.model, opened.tokenizer, opened.task
    examples = task.read(cluener_sets["dev"])[:8]
    batch = tok.batch([ex.text_a for ex in examples], max_length=64)  # lengths differ: padding is exercised
    assert not batch["attention_mask"].all()
    label2id = {v: k for k, v in opened.id2label.items()}
    labels = torch.tensor([task.target(ex.label, label2id) for ex in examples[:-1]] + [task.target("", label2id)])
    assert labels[:-1].sum(1).min() > 0 and labels[-1].sum() == 0  # label sets of one to three labels, and none
    with torch.no_grad():
        a = ours.eval()(**batch, labels=labels)
        b = ref.eval()(**batch, labels=labels)
    # Same weights, same fp32 input; the kernels differ (fused QKV, unpadded rows), so equal up to rounding: 1e-5.
    assert a.logits.shape == b.logits.shape == (8, len(label2id))
    assert (a.logits - b.logits).abs().max() <= 1e-5
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


def test_a_hugging_face_multilabel_directory_is_recognised(multilabel_model: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = multilabel_model
    copy = tmp_path / "hf"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("training", TASK_FILE))
    assert fine_tuned_task(copy) == "multilabel"
    opened = open_task_model(copy, "cpu")  # no thresholds kept: one half for every label
    (row,) = opened.predict([opened.task.from_json({"text": "北京故宫博物院"})])
    assert row["labels"] == [k for k, p in row["probabilities"].items() if p > 0.5]


def test_served_multilabel_model(multilabel_model: tuple[Path, dict]) -> None:
    from bertkit.serve import Service

    service = Service(multilabel_model[0], device="cpu")
    assert service.info()["task"] == "multilabel"
    (row,) = service.predict([{"text": "彭小军认为，国内银行现在走的是台湾的发卡模式"}])
    assert set(row) == {"labels", "probabilities"} and isinstance(row["labels"], list)


@pytest.mark.skipif(shutil.which("node") is None, reason="the web page's script is run in node")
def test_web_page_shows_the_chosen_labels_and_every_probability(multilabel_model: tuple[Path, dict], tmp_path) -> None:
    import re

    from test_serve import PAGE, page_shown, request, served

    example = re.search(r'multilabel: \[\["text", "([^"]+)"', PAGE.read_text(encoding="utf-8")).group(1)  # type: ignore[union-attr]
    with served(multilabel_model[0]) as url:
        shown = page_shown(url, tmp_path)
        (want,) = request(url + "/api/predict", {"text": example})[1]["predictions"]
    assert shown["shown"] == {"predict": True, "fill-mask": False, "embed": True}
    html = shown["predict"]
    assert html.count("<tr>") == len(want["probabilities"])
    chosen = re.findall(r"<b[^>]*>(.*?)</b>", html.split("</p>")[0])
    assert chosen == want["labels"] or (not want["labels"] and "none above its threshold" in html)
