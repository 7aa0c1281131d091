"""Fine-tuning recipes end to end on small real subsets, metric parity, and bad input."""

from __future__ import annotations

import json
import random
import re
import string
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.data.task_files import read_conll
from bertkit.metrics import entity_prf, qa_scores

# ------------------------------------------------------------------------------------------ metric parity


def _perturb(tags: list[str], rng: random.Random, labels: list[str]) -> list[str]:
    out = list(tags)
    for i in range(len(out)):
        if rng.random() < 0.08:
            out[i] = rng.choice(labels)  # includes invalid I- after O, type switches, ...
    return out


def _to_bioes(tags: list[str]) -> list[str]:
    out = []
    for i, t in enumerate(tags):
        nxt = tags[i + 1] if i + 1 < len(tags) else "O"
        cont = nxt.startswith("I-") and nxt[2:] == t[2:]
        if t.startswith("B-"):
            out.append(t if cont else "S-" + t[2:])
        elif t.startswith("I-"):
            out.append(t if cont else "E-" + t[2:])
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("name", ["wikiann_en/dev.txt", "cluener2020/dev.txt"])
def test_entity_f1_equals_seqeval(data_dir: Path, name: str) -> None:
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [s.tags for s in read_conll(data_dir / name)][:1500]
    labels = sorted({t for s in gold for t in s})
    rng = random.Random(0)
    pred = [_perturb(s, rng, labels) for s in gold]
    for g, p in ((gold, pred), ([_to_bioes(s) for s in gold], [_to_bioes(s) for s in pred])):
        ours = entity_prf(p, g)
        assert ours["precision"] == pytest.approx(precision_score(g, p), abs=1e-12)
        assert ours["recall"] == pytest.approx(recall_score(g, p), abs=1e-12)
        assert ours["f1"] == pytest.approx(f1_score(g, p), abs=1e-12)
        assert 0.3 < ours["f1"] < 0.95  # the perturbation really changes things


def _official_normalize(s: str) -> str:
    # The SQuAD v1.1 evaluation script's normalize_answer, step by step.
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _official_f1(pred: str, gold: str) -> float:
    p, g = _official_normalize(pred).split(), _official_normalize(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def test_squad_scores_equal_the_official_formulas(data_dir: Path) -> None:
    data = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text())["data"]
    answers = {q["id"]: [a["text"] for a in q["answers"]] for art in data for p in art["paragraphs"] for q in p["qas"]}
    rng = random.Random(1)
    preds = {}
    for qid, golds in list(answers.items())[:3000]:
        words = golds[0].split()
        choice = rng.randrange(5)
        if choice == 0:
            preds[qid] = golds[0]
        elif choice == 1:
            preds[qid] = "The " + golds[0].upper() + "."
        elif choice == 2:
            preds[qid] = " ".join(words[: max(1, len(words) // 2)])
        elif choice == 3:
            preds[qid] = golds[0] + " and more words"
        else:
            preds[qid] = "unrelated"
    subset = {k: answers[k] for k in preds}
    ours = qa_scores(preds, subset, "en")
    em = sum(max(float(_official_normalize(preds[k]) == _official_normalize(g)) for g in v) for k, v in subset.items())
    f1 = sum(max(_official_f1(preds[k], g) for g in v) for k, v in subset.items())
    assert ours["exact_match"] == pytest.approx(em / len(subset), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1 / len(subset), abs=1e-12)
    assert 0.3 < ours["exact_match"] < ours["f1"] < 1.0


def test_cmrc_character_scores() -> None:
    s = qa_scores(
        {"a": "北京大学", "b": "在北京", "c": "上海"}, {"a": ["北京大学。"], "b": ["北京"], "c": ["北京"]}, "zh"
    )
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx((1 + 0.8 + 0) / 3)  # "在北京" vs "北京": P 2/3, R 1 -> F1 0.8


# ------------------------------------------------------------------------------------------ end to end


def bertkit(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "bertkit.cli", *args], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def tiny_zh_model(tmp_path_factory, data_dir: Path) -> Path:
    """A small randomly initialised Chinese BERT with a vocabulary learned from the task texts."""
    out = tmp_path_factory.mktemp("tiny_zh")
    corpus = out / "corpus.txt"
    texts = [r.split("\t")[0] for r in (data_dir / "chnsenticorp/train.tsv").read_text().splitlines()[1:3000]]
    texts += ["".join(s.tokens) for s in read_conll(data_dir / "cluener2020/train.txt")[:3000]]
    corpus.write_text("\n".join(texts), encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=4000, show_progress=False)
    BertForPreTraining(BertConfig.preset("tiny", vocab_size=tok.vocab_size)).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


def _head(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()
    dst.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return dst


def test_finetune_cls_evaluate_predict(tmp_path: Path, tiny_zh_model: Path, data_dir: Path) -> None:
    import transformers

    train = _head(data_dir / "chnsenticorp/train.tsv", tmp_path / "train.tsv", 600)
    dev = _head(data_dir / "chnsenticorp/dev.tsv", tmp_path / "dev.tsv", 200)
    out = tmp_path / "cls"
    r = bertkit("finetune", "--task", "cls", "--model", str(tiny_zh_model), "--train", str(train), "--dev", str(dev),
                "--out", str(out), "--epochs", "2", "--learning-rate", "1e-3", "--batch-size", "32")  # fmt: skip
    dev_metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"accuracy", "macro_f1"} <= dev_metrics.keys()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dev"]["accuracy"] == dev_metrics["accuracy"] and saved["labels"] == ["0", "1"]
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    r = bertkit("evaluate", "--model", str(out), "--data", str(dev))
    assert json.loads(r.stdout.strip().splitlines()[-1])["accuracy"] == dev_metrics["accuracy"]
    lines = bertkit("predict", "--model", str(out), "--input", str(dev)).stdout.strip().splitlines()
    rows = [json.loads(x) for x in lines]
    assert len(rows) == 199 and set(rows[0]["probabilities"]) == {"0", "1"}
    _, info = transformers.BertForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_finetune_pair_ner_qa(tmp_path: Path, tiny_zh_model: Path, data_dir: Path) -> None:
    train = _head(data_dir / "afqmc/train.tsv", tmp_path / "afqmc.tsv", 300)
    r = bertkit("finetune", "--task", "pair", "--model", str(tiny_zh_model), "--train", str(train), "--dev",
                str(train), "--out", str(tmp_path / "pair"), "--epochs", "1")  # fmt: skip
    assert "accuracy" in json.loads(r.stdout.strip().splitlines()[-1])

    ner_train = tmp_path / "ner.txt"
    sents = (data_dir / "cluener2020/train.txt").read_text(encoding="utf-8").split("\n\n")[:300]
    ner_train.write_text("\n\n".join(sents) + "\n", encoding="utf-8")
    out = tmp_path / "ner"
    r = bertkit("finetune", "--task", "ner", "--model", str(tiny_zh_model), "--train", str(ner_train), "--dev",
                str(ner_train), "--out", str(out), "--epochs", "3", "--learning-rate", "2e-3")  # fmt: skip
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"precision", "recall", "f1"} <= metrics.keys()
    text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"
    p = subprocess.run([sys.executable, "-m", "bertkit.cli", "predict", "--model", str(out), "--input", "-"],
                       input=text + "\n", capture_output=True, text=True, check=True)  # fmt: skip
    row = json.loads(p.stdout)
    assert len(row["tags"]) == len(text)
    for ent in row["entities"]:
        assert text[ent["start"] : ent["end"]] == ent["text"]

    qa_train = tmp_path / "cmrc.json"
    data = json.loads((data_dir / "cmrc2018/train.json").read_text())
    data["data"] = data["data"][:40]
    qa_train.write_text(json.dumps(data, ensure_ascii=False))
    r = bertkit("finetune", "--task", "qa", "--model", str(tiny_zh_model), "--train", str(qa_train), "--dev",
                str(qa_train), "--out", str(tmp_path / "qa"), "--epochs", "1", "--max-seq-length", "256",
                "--relocate-answers", ok=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["scoring"] == "cmrc2018" and 0 <= metrics["exact_match"] <= metrics["f1"] <= 1


def test_bad_task_input(tmp_path: Path, tiny_zh_model: Path, data_dir: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\n好\t1\n坏\t0\textra\n", encoding="utf-8")
    r = bertkit("finetune", "--task", "cls", "--model", str(tiny_zh_model), "--train", str(bad), "--out",
                str(tmp_path / "o"), ok=False)  # fmt: skip
    assert r.returncode == 2 and f"{bad}:3" in r.stderr and "Traceback" not in r.stderr

    train, dev = tmp_path / "t.tsv", tmp_path / "d.tsv"
    train.write_text("text\tlabel\n好\t1\n坏\t0\n", encoding="utf-8")
    dev.write_text("text\tlabel\n好\t1\n一般\t2\n", encoding="utf-8")
    r = bertkit("finetune", "--task", "cls", "--model", str(tiny_zh_model), "--train", str(train), "--dev", str(dev),
                "--out", str(tmp_path / "o"), ok=False)  # fmt: skip
    assert r.returncode == 2 and f"{dev}:3" in r.stderr and "'2'" in r.stderr

    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps({"data": [{"paragraphs": [{"context": "小明在北京工作。", "qas": [
        {"id": "q1", "question": "小明在哪里？", "answers": [{"text": "北京", "answer_start": 0}]}]}]}]}))  # fmt: skip
    r = bertkit("finetune", "--task", "qa", "--model", str(tiny_zh_model), "--train", str(qa), "--out",
                str(tmp_path / "o"), ok=False)  # fmt: skip
    assert (
        r.returncode == 2 and "'q1'" in r.stderr and "answer_start 0" in r.stderr and "--relocate-answers" in r.stderr
    )

    r = bertkit("evaluate", "--model", str(tiny_zh_model), "--data", str(train), ok=False)
    assert r.returncode == 2 and "not a fine-tuned task model" in r.stderr
    r = bertkit("predict", "--model", str(tiny_zh_model), "--input", str(train), ok=False)
    assert r.returncode == 2 and "not a fine-tuned task model" in r.stderr


def test_relocate_keeps_unfindable_answers_for_scoring_only(tmp_path: Path, tiny_zh_model: Path) -> None:
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
    features = QaTask(TaskSettings(max_seq_length=64)).features(examples, Tokenizer.from_pretrained(tiny_zh_model),
                                                               None, train=True)  # fmt: skip
    assert {f["example"] for f in features} == {0}


def test_finetune_says_what_it_did(
    tmp_path: Path, tiny_zh_model: Path, data_dir: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
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
    shutil.copytree(tiny_zh_model, model)
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
    assert not [r for r in caplog.records if "initialised fresh" in r.getMessage()]
    notes = [x for x in lines if x.startswith("note:")]
    assert notes == ["note: the model was pre-trained on up to 16 tokens; positions 16-31 start untrained and are "
                     "learned here"]  # fmt: skip
    accuracy, step, epoch = result["dev"]["accuracy"], result["best_step"], result["best_epoch"]
    assert f"best dev accuracy {accuracy:.3f} at step {step} (epoch {epoch} of 2), saved to {out}" in lines
    assert step in (4, 8) and epoch == step // 4
    assert "epoch=2/2" in printed.err and "dev accuracy=" in printed.err  # the progress bar

    from bertkit.cli import main

    # Through the command: without --dev its last line is the closing line (it was a bare `{}`).
    argv = ["finetune", "--task", "cls", "--model", str(model), "--train", str(train), "--out", str(tmp_path / "nodev"),
            "--max-steps", "2", "--batch-size", "16", "--max-seq-length", "32"]  # fmt: skip
    assert main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"no --dev: the last model (step 2, epoch 1 of 1) saved to {tmp_path / 'nodev'}"
