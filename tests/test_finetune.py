"""Fine-tuning recipes end to end on small real subsets, and bad input. (The metrics' parity: test_metrics.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import run_bertkit

from bertkit import Tokenizer

# ------------------------------------------------------------------------------------------ end to end


def _head(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()
    dst.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return dst


def test_finetune_cls_evaluate_predict(
    tmp_path: Path, tiny_zh_pretrained: Path, data_dir: Path, bertkit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from bertkit.train import loop
    from bertkit.train.metrics_log import curve_points, read_metrics_log

    drawn = []  # what curves.png shows: the task names its scores (the trainer knows none by name)
    monkeypatch.setattr(loop, "plot_metrics", lambda log, png, curves: drawn.append(curve_points(
        read_metrics_log(log), curves)))  # fmt: skip
    train = _head(data_dir / "chnsenticorp/train.tsv", tmp_path / "train.tsv", 600)
    dev = _head(data_dir / "chnsenticorp/dev.tsv", tmp_path / "dev.tsv", 200)
    out = tmp_path / "cls"
    r = bertkit("finetune", "--task", "cls", "--model", tiny_zh_pretrained, "--train", train, "--dev", dev,
                "--out", out, "--epochs", "2", "--learning-rate", "1e-3", "--batch-size", "32")  # fmt: skip
    assert r.status == 0, r.err[-3000:]
    dev_metrics = r.last_json()
    assert {"accuracy", "macro_f1"} <= dev_metrics.keys()
    assert [(list(losses), list(scores)) for losses, scores in drawn] == [
        (["train loss"], ["held-out accuracy", "held-out macro_f1"])
    ]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dev"]["accuracy"] == dev_metrics["accuracy"] and saved["labels"] == ["0", "1"]
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    r = bertkit("evaluate", "--model", out, "--data", dev)
    assert r.status == 0, r.err[-3000:]
    assert r.last_json()["accuracy"] == dev_metrics["accuracy"]
    r = bertkit("predict", "--model", out, "--input", dev)
    assert r.status == 0, r.err[-3000:]
    rows = [json.loads(x) for x in r.out.strip().splitlines()]
    assert len(rows) == 199 and set(rows[0]["probabilities"]) == {"0", "1"}
    _, info = transformers.BertForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_finetune_pair_ner_qa(tmp_path: Path, tiny_zh_pretrained: Path, data_dir: Path, bertkit) -> None:
    train = _head(data_dir / "afqmc/train.tsv", tmp_path / "afqmc.tsv", 300)
    r = bertkit("finetune", "--task", "pair", "--model", tiny_zh_pretrained, "--train", train, "--dev", train,
                "--out", tmp_path / "pair", "--epochs", "1")  # fmt: skip
    assert r.status == 0, r.err[-3000:]
    assert "accuracy" in r.last_json()

    ner_train = tmp_path / "ner.txt"
    sents = (data_dir / "cluener2020/train.txt").read_text(encoding="utf-8").split("\n\n")[:300]
    ner_train.write_text("\n\n".join(sents) + "\n", encoding="utf-8")
    out = tmp_path / "ner"
    r = bertkit("finetune", "--task", "ner", "--model", tiny_zh_pretrained, "--train", ner_train, "--dev", ner_train,
                "--out", out, "--epochs", "3", "--learning-rate", "2e-3")  # fmt: skip
    assert r.status == 0, r.err[-3000:]
    metrics = r.last_json()
    assert {"precision", "recall", "f1"} <= metrics.keys()
    text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"
    p = run_bertkit("predict", "--model", out, "--input", "-", stdin=text + "\n")  # standard input: a process
    assert p.status == 0, p.err[-3000:]
    row = json.loads(p.out)
    assert len(row["tags"]) == len(text)
    for ent in row["entities"]:
        assert text[ent["start"] : ent["end"]] == ent["text"]

    qa_train = tmp_path / "cmrc.json"
    data = json.loads((data_dir / "cmrc2018/train.json").read_text())
    data["data"] = data["data"][:40]
    qa_train.write_text(json.dumps(data, ensure_ascii=False))
    r = bertkit("finetune", "--task", "qa", "--model", tiny_zh_pretrained, "--train", qa_train, "--dev", qa_train,
                "--out", tmp_path / "qa", "--epochs", "1", "--max-seq-length", "256", "--relocate-answers")  # fmt: skip
    assert r.status == 0, r.err[-2000:]
    metrics = r.last_json()
    assert metrics["scoring"] == "cmrc2018" and 0 <= metrics["exact_match"] <= metrics["f1"] <= 1


def test_bad_task_input(tmp_path: Path, tiny_zh_pretrained: Path, data_dir: Path, bertkit) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\n好\t1\n坏\t0\textra\n", encoding="utf-8")
    r = bertkit("finetune", "--task", "cls", "--model", tiny_zh_pretrained, "--train", bad, "--out", tmp_path / "o")
    assert r.status == 2 and f"{bad}:3" in r.err and "Traceback" not in r.err

    train, dev = tmp_path / "t.tsv", tmp_path / "d.tsv"
    train.write_text("text\tlabel\n好\t1\n坏\t0\n", encoding="utf-8")
    dev.write_text("text\tlabel\n好\t1\n一般\t2\n", encoding="utf-8")
    r = bertkit("finetune", "--task", "cls", "--model", tiny_zh_pretrained, "--train", train, "--dev", dev, "--out",
                tmp_path / "o")  # fmt: skip
    assert r.status == 2 and f"{dev}:3" in r.err and "'2'" in r.err and "add examples of it to the training" in r.err

    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps({"data": [{"paragraphs": [{"context": "小明在北京工作。", "qas": [
        {"id": "q1", "question": "小明在哪里？", "answers": [{"text": "北京", "answer_start": 0}]}]}]}]}))  # fmt: skip
    r = bertkit("finetune", "--task", "qa", "--model", tiny_zh_pretrained, "--train", qa, "--out", tmp_path / "o")
    assert r.status == 2 and "'q1'" in r.err and "answer_start 0" in r.err and "--relocate-answers" in r.err

    r = bertkit("evaluate", "--model", tiny_zh_pretrained, "--data", train)
    assert r.status == 2 and "not a fine-tuned task model" in r.err
    r = bertkit("predict", "--model", tiny_zh_pretrained, "--input", train)
    assert r.status == 2 and "not a fine-tuned task model" in r.err


def test_relocate_keeps_unfindable_answers_for_scoring_only(tmp_path: Path, tiny_zh_pretrained: Path) -> None:
    """CMRC 2018 dev has answers whose text is not in the passage (e.g. a variant character): with
    --relocate-answers they stay gold texts for scoring, and a question with no findable answer is not trained on."""
    from bertkit.data.task_files import read_squad
    from bertkit.tasks.qa import QaTask
    from bertkit.tasks.settings import TaskSettings

    qa = tmp_path / "qa.json"
    qas = [
        {"id": "moved", "question": "小明在哪里？", "answers": [{"text": "北京", "answer_start": 0}]},
        {"id": "absent", "question": "小明做什么？", "answers": [{"text": "効力", "answer_start": -1}]},
    ]
    qa.write_text(json.dumps({"data": [{"paragraphs": [{"context": "小明在北京工作。", "qas": qas}]}]}))
    examples = read_squad(qa, relocate_answers=True)
    assert [ex.answers for ex in examples] == [[("北京", 3)], [("効力", -1)]]
    tok = Tokenizer.from_pretrained(tiny_zh_pretrained)
    features = QaTask(TaskSettings(max_seq_length=64)).features(examples, tok, None, train=True)
    assert {f["example"] for f in features} == {0}


def test_finetune_says_what_it_did(
    tmp_path: Path,
    tiny_zh_pretrained: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    bertkit,
) -> None:
    """The expected case is quiet and the end state explicit: the new task head announced as such (not as the
    loader's "initialised fresh" warning), a one-line note on untrained positions, epoch and dev score on the
    progress bar, and a closing line with the best dev score, its step and epoch, and where the model is."""
    import logging
    import shutil

    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.recipes.finetune import run_finetune
    from bertkit.tasks.settings import TaskSettings

    model = tmp_path / "model"
    shutil.copytree(tiny_zh_pretrained, model)
    (model / "bertkit_pretraining.json").write_text(json.dumps({"max_seq_length": 16}))  # pre-trained at 16 tokens
    train = _head(data_dir / "chnsenticorp/train.tsv", tmp_path / "train.tsv", 65)
    dev = _head(data_dir / "chnsenticorp/dev.tsv", tmp_path / "dev.tsv", 33)
    out = tmp_path / "cls"
    settings = TaskSettings(max_seq_length=32)
    with caplog.at_level(logging.INFO):
        result = run_finetune(FinetuneConfig(task="cls", model=str(model), train_file=str(train), dev_file=str(dev),
                                             out=str(out), epochs=2, train=finetune_training(batch_size=16),
                                             settings=settings))  # fmt: skip
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert "classifier: a new task head for 2 labels, trained from scratch (the usual start of fine-tuning)" in lines
    # No --learning-rate: the rate for the model's size, and why (the tiny model's hidden size is 128).
    assert "learning rate 0.001 (for a small model (hidden size 128 <= 256), BERT's 5e-05 trains too slowly; " \
        "--learning-rate sets another)" in lines  # fmt: skip
    assert result["args"]["learning_rate"] == 1e-3
    assert not [r for r in caplog.records if "initialised fresh" in r.getMessage()]
    notes = [x for x in lines if x.startswith("note:")]
    assert notes[0] == ("note: the model was pre-trained on up to 16 tokens; positions 16-31 start untrained and are "
                        "learned here")  # fmt: skip
    for note, path in zip(notes[1:], (train, dev), strict=True):  # reviews longer than 32 tokens, in each file
        assert re.fullmatch(rf"note: \d+ of \d+ inputs in {re.escape(str(path))} are longer than max_seq_length 32 "
                            r"tokens: truncated \(--long-inputs window reads all of each\)", note), note  # fmt: skip
    accuracy, step, epoch = result["dev"]["accuracy"], result["best_step"], result["best_epoch"]
    assert f"best dev accuracy {accuracy:.3f} at step {step} (epoch {epoch} of 2), saved to {out}" in lines
    assert step in (4, 8) and epoch == step // 4
    assert "epoch=2/2" in printed.err and "dev accuracy=" in printed.err  # the progress bar

    # Through the command: without --dev its last line is the closing line (it was a bare `{}`).
    r = bertkit("finetune", "--task", "cls", "--model", model, "--train", train, "--out", tmp_path / "nodev",
                "--max-steps", "2", "--batch-size", "16", "--max-seq-length", "32")  # fmt: skip
    assert r.status == 0
    last = r.out.splitlines()[-1]
    assert last == f"no --dev: the last model (step 2, epoch 1 of 1) saved to {tmp_path / 'nodev'}"


def test_learning_rate_grid_keeps_the_best_run_on_dev(
    tmp_path: Path, tiny_zh_pretrained: Path, data_dir: Path, bertkit
) -> None:
    """--learning-rate with several values (the BERT paper's protocol) and --seeds: one run each in DIR/runs, the
    best on dev copied to DIR (a model directory that predict reads), every run's score in grid.md; a re-run with
    --resume reads the finished runs back instead of training them again."""
    train = _head(data_dir / "chnsenticorp/train.tsv", tmp_path / "train.tsv", 49)
    dev = _head(data_dir / "chnsenticorp/dev.tsv", tmp_path / "dev.tsv", 33)
    out = tmp_path / "grid"
    args = ["finetune", "--task", "cls", "--model", tiny_zh_pretrained, "--train", train, "--dev", dev, "--out", out,
            "--max-steps", "3", "--batch-size", "16", "--max-seq-length", "32", "--learning-rate", "1e-3,3e-3",
            "--seeds", "2"]  # fmt: skip
    r = bertkit(*args)
    assert r.status == 0, r.err[-2000:]
    grid = json.loads((out / "grid.json").read_text())
    assert [(run["learning_rate"], run["seed"]) for run in grid["runs"]] == [(1e-3, 42), (1e-3, 43), (3e-3, 42),
                                                                             (3e-3, 43)]  # fmt: skip
    scores = [run["dev"]["accuracy"] for run in grid["runs"]]
    best = grid["best"]
    assert best["dev"]["accuracy"] == max(scores) and grid["runs"][scores.index(max(scores))] == best
    assert (out / "model.safetensors").read_bytes() == (Path(best["out"]) / "model.safetensors").read_bytes()
    assert len((out / "grid.md").read_text().splitlines()) == 4 + 4 + 2 and r.last_json() == best["dev"]
    assert bertkit("predict", "--model", out, "--input", dev).status == 0
    stamps = [p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*/model.safetensors"))]
    again = bertkit(*args, "--resume")
    assert again.status == 0 and again.out.count("finished before") == 4
    assert [p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*/model.safetensors"))] == stamps
    no_dev = bertkit(*[a for a in args if a not in ("--dev", dev)], "--out", tmp_path / "x")
    assert no_dev.status == 2 and "give --dev" in no_dev.err
