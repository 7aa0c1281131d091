"""Regression (`--task regression`): a text or text pair -> one number, MSE loss, dev metrics Pearson, Spearman and
MSE; the saved directory loads in transformers as a regression model that computes the same logits and loss; a
classification asked for on fractional labels is refused with a line that names the place and the fix.

No data set in shared/data has a numeric score, so the regression data here is made from real sentences with a
simple target, stated plainly: a ChnSentiCorp review's sentiment label as 0.0 / 1.0, and 0.5 for a text made of
the first part of a negative review followed by the first part of a positive one. AFQMC pairs give 0.0 / 1.0.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from realdata import tsv_rows

from bertkit import BertkitError
from bertkit.metrics import mean_squared_error
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.tasks.model_dir import TASK_FILE, fine_tuned_task, open_task_model
from bertkit.tasks.settings import TaskSettings


def _sentiment_scores(data_dir: Path, split: str, n: int) -> list[tuple[str, str]]:
    rows = tsv_rows(data_dir / f"chnsenticorp/{split}.tsv")
    pos = [r["text"] for r in rows if r["label"] == "1"][:n]
    neg = [r["text"] for r in rows if r["label"] == "0"][:n]
    out = []
    for p, q in zip(pos, neg, strict=True):
        out += [(p, "1.0"), (q, "0"), (q[:40] + p[:40], "0.5")]
    return out


def _write_tsv(path: Path, header: str, rows: list[tuple[str, ...]]) -> Path:
    path.write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("regression_data")
    return {
        "train": _write_tsv(root / "train.tsv", "text\tlabel", _sentiment_scores(data_dir, "train", 32)),
        "dev": _write_tsv(root / "dev.tsv", "text\tlabel", _sentiment_scores(data_dir, "dev", 10)),
    }


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory, tiny_zh_pretrained: Path, sentiment: dict[str, Path]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("regression_run") / "model"
    train = finetune_training(max_steps=6, eval_every=3, batch_size=16, learning_rate=1e-3, progress=False)
    cfg = FinetuneConfig(task="regression", model=str(tiny_zh_pretrained), train_file=str(sentiment["train"]),
                         dev_file=str(sentiment["dev"]), out=str(out), train=train,
                         settings=TaskSettings(max_seq_length=64))  # fmt: skip
    return out, run_finetune(cfg)


# ------------------------------------------------------------------------------------------ choosing the task


@pytest.mark.parametrize("task", ["cls", "pair"])
def test_classification_on_fractional_labels_is_refused(
    tmp_path: Path, tiny_zh_pretrained: Path, data_dir: Path, task: str, bertkit
) -> None:
    rows = tsv_rows(data_dir / "afqmc/train.tsv")[:6]
    labels = ["0", "1", "0.5", "1", "0", "1"]  # 0/1 with one 0.5, as in the report
    header = "text\tlabel" if task == "cls" else "text_a\ttext_b\tlabel"
    texts = [(r["text_a"],) if task == "cls" else (r["text_a"], r["text_b"]) for r in rows]
    data = [(*t, y) for t, y in zip(texts, labels, strict=True)]
    train = _write_tsv(tmp_path / "train.tsv", header, data)
    out = tmp_path / "out"
    r = bertkit("finetune", "--task", task, "--model", tiny_zh_pretrained, "--train", train, "--dev", train,
                "--out", out, "--max-steps", "2")  # fmt: skip
    code, err = r.status, r.err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"0.5 at {train}:4" in err and "pass --task regression" in err
    assert not out.exists()  # refused before anything was written


def test_regression_needs_numbers(tmp_path: Path) -> None:
    from bertkit.tasks.classify import RegressionTask

    path = _write_tsv(tmp_path / "train.tsv", "text\tlabel", [("好", "0.5"), ("不好", "low"), ("一般", "nan")])
    with pytest.raises(BertkitError, match=r"train\.tsv:3: label 'low' is not a number"):
        RegressionTask().read(path)
    path = _write_tsv(tmp_path / "train.tsv", "text\tlabel", [("好", "0.5"), ("一般", "nan")])
    with pytest.raises(BertkitError, match=r"train\.tsv:3: label 'nan' is not a finite number"):
        RegressionTask().read(path)


# ------------------------------------------------------------------------------------------ train, save, use


def test_regression_trains_with_dev_and_saves_the_best_model(regression_model: tuple[Path, dict]) -> None:
    out, result = regression_model
    assert set(result["dev"]) == {"pearson", "spearman", "mse", "examples"}
    assert result["dev"]["examples"] == 30 and all(math.isfinite(v) for v in result["dev"].values())
    assert result["best_step"] in (3, 6) and result["labels"] == ["score"]
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    meta = json.loads((out / TASK_FILE).read_text())
    assert meta["task"] == "regression" and meta["settings"]["text_pair"] is False
    assert json.loads((out / "metrics.json").read_text())["dev"] == result["dev"]


def test_predict_and_evaluate_give_scores_and_regression_metrics(
    regression_model: tuple[Path, dict], sentiment: dict[str, Path], bertkit
) -> None:
    out, result = regression_model
    r = bertkit("predict", "--model", out, "--input", sentiment["dev"], "--device", "cpu")
    assert r.status == 0
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert len(rows) == 30 and all(isinstance(r["score"], float) and "label" not in r for r in rows)
    r = bertkit("evaluate", "--model", out, "--data", sentiment["dev"], "--device", "cpu")
    assert r.status == 0
    metrics = json.loads(r.out.splitlines()[-1])
    # The model saved is the best dev one, so evaluating it reproduces the best dev metrics (same batches: the
    # same numbers up to float summation order, hence the tolerance).
    assert metrics.keys() == result["dev"].keys()
    for k, v in result["dev"].items():
        assert metrics[k] == pytest.approx(v, abs=1e-5), k
    gold = [float(line.split("\t")[1]) for line in sentiment["dev"].read_text(encoding="utf-8").splitlines()[1:]]
    assert metrics["mse"] == pytest.approx(mean_squared_error([r["score"] for r in rows], gold), abs=1e-5)
    # Plain lines (a .txt file, or standard input) are read as texts, as for a classifier, in the same order.
    texts = [line.split("\t")[0] for line in sentiment["dev"].read_text(encoding="utf-8").splitlines()[1:]]
    plain = sentiment["dev"].with_suffix(".txt")
    plain.write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = bertkit("predict", "--model", out, "--input", plain, "--device", "cpu")
    assert r.status == 0
    plain_rows = [json.loads(line) for line in r.out.splitlines()]
    assert [r["text"] for r in plain_rows] == texts
    assert [r["score"] for r in plain_rows] == pytest.approx([r["score"] for r in rows], abs=1e-6)
    # evaluate --task cls on a regression model is refused (it would report nonsense accuracy)
    r = bertkit("evaluate", "--model", out, "--data", sentiment["dev"], "--task", "cls")
    assert r.status == 2
    assert "not 'cls'" in r.err


def test_regression_model_loads_in_transformers_with_same_logits_and_loss(
    regression_model: tuple[Path, dict], sentiment: dict[str, Path]
) -> None:
    import transformers

    out, _ = regression_model
    ref, info = transformers.BertForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert ref.config.problem_type == "regression" and ref.config.num_labels == 1
    opened = open_task_model(out, "cpu")
    ours, tok = opened.model, opened.tokenizer
    rows = [line.split("\t") for line in sentiment["dev"].read_text(encoding="utf-8").splitlines()[1:9]]
    batch = tok.batch([r[0] for r in rows], max_length=64)  # lengths differ: padding is exercised
    assert not batch["attention_mask"].all()
    labels = torch.tensor([float(r[1]) for r in rows])
    with torch.no_grad():
        a = ours.eval()(**batch, labels=labels)
        b = ref.eval()(**batch, labels=labels)
    # Same weights, same fp32 input; the kernels differ (fused QKV, unpadded rows), so equal up to rounding: 1e-5.
    assert a.logits.shape == b.logits.shape == (8, 1)
    assert (a.logits - b.logits).abs().max() <= 1e-5
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5


def test_a_regression_directory_without_bertkit_task_file_is_recognised(
    regression_model: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = regression_model
    copy = tmp_path / "hf"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("training", TASK_FILE))
    assert fine_tuned_task(copy) == "regression"
    # As transformers writes one without problem_type: a single output is a regression (its rule too).
    config = json.loads((copy / "config.json").read_text())
    del config["problem_type"]
    config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (copy / "config.json").write_text(json.dumps(config))
    assert fine_tuned_task(copy) == "regression"
    opened = open_task_model(copy, "cpu")
    assert list(opened.predict([opened.task.from_json({"text": "服务很好"})])[0]) == ["score"]


def test_served_regression_model(regression_model: tuple[Path, dict]) -> None:
    from bertkit.serve import Service

    service = Service(regression_model[0], device="cpu")
    assert service.info()["task"] == "regression"
    (row,) = service.predict([{"text": "房间很干净"}])
    assert set(row) == {"score"} and math.isfinite(row["score"])
    with pytest.raises(BertkitError, match=r"inputs\[0\].*a regression model takes"):
        service.predict([{"txt": "x"}])


def test_pair_regression_keeps_its_input_form(tmp_path: Path, tiny_zh_pretrained: Path, data_dir: Path) -> None:
    rows = tsv_rows(data_dir / "afqmc/train.tsv")[:24]
    data = [(r["text_a"], r["text_b"], f"{float(r['label']):.1f}") for r in rows]
    train = _write_tsv(tmp_path / "train.tsv", "text_a\ttext_b\tlabel", data)
    out = tmp_path / "out"
    settings = TaskSettings(max_seq_length=64)
    training = finetune_training(max_steps=2, batch_size=12, progress=False)
    cfg = FinetuneConfig(task="regression", model=str(tiny_zh_pretrained), train_file=str(train), out=str(out),
                         train=training, settings=settings)  # fmt: skip
    run_finetune(cfg)
    assert json.loads((out / TASK_FILE).read_text())["settings"]["text_pair"] is True
    opened = open_task_model(out, "cpu")
    task, tok = opened.task, opened.tokenizer
    with pytest.raises(BertkitError, match="text_b"):
        task.from_json({"text": "只有一句"})
    ex = task.from_json({"text_a": rows[0]["text_a"], "text_b": rows[0]["text_b"]})
    (feature,) = task.features([ex], tok, None, train=False)
    assert feature["token_type_ids"][-1] == 1  # the second text is segment B


@pytest.mark.skipif(shutil.which("node") is None, reason="the web page's script is run in node")
def test_web_page_asks_for_a_text_and_shows_the_score(regression_model: tuple[Path, dict], tmp_path: Path) -> None:
    import re

    from test_serve import PAGE, page_shown, request, served

    example = re.search(r'cls: \[\["text", "([^"]+)"', PAGE.read_text(encoding="utf-8")).group(1)  # type: ignore[union-attr]
    with served(regression_model[0]) as url:
        shown = page_shown(url, tmp_path)
        (want,) = request(url + "/api/predict", {"text": example})[1]["predictions"]
    assert shown["shown"] == {"predict": True, "fill-mask": False, "embed": True}
    assert shown["predict"] == f"<p>score: <b>{want['score']:.4f}</b></p>"
