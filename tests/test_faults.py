"""Faults of training runs: kill -9 then --resume (exact, best model kept, no leftovers), a diverging run, a full
disk, and the user mistakes that could lose data (an output that is an input, a non-empty foreign output).

Small on purpose (the tiny preset, 32-token sequences, tens of steps). Only the runs that are killed are separate
`python -m bertkit.cli` processes; the others run `bertkit.cli.main` in this process (the `bertkit` fixture: an
interpreter start-up, torch's and tensorboard's imports cost more than these runs). Every run compared for exact
equality uses one thread (the `one_thread` fixture here, OMP_NUM_THREADS=1 there), so the arithmetic is the same in
all of them. The training loop's own faults, on a toy model without shared data: test_train_faults.py."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import bertkit_command, interrupt, start_bertkit, training_leftovers
from safetensors.torch import load_file

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.checkpoint import read_tensors
from bertkit.data.config import PrepareConfig
from bertkit.data.prepare import prepare
from bertkit.train.loop import Trainer
from bertkit.train.state import latest_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def cls_data(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    """A tiny random Chinese BERT and a 48-example sentiment training set with a 32-example dev set. Its own model,
    not the shared `tiny_zh_pretrained`: an 800-piece vocabulary learned from these 80 reviews and 64 positions make
    0.54 M weights (0.88 M there), so the many checkpoints these runs write, kill, resume and compare stay small."""
    root = tmp_path_factory.mktemp("faults_cls")
    lines = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()
    (root / "train.tsv").write_text("\n".join(lines[:49]) + "\n", encoding="utf-8")
    (root / "dev.tsv").write_text("\n".join([lines[0], *lines[49:81]]) + "\n", encoding="utf-8")
    (root / "corpus.txt").write_text("\n".join(x.split("\t")[0] for x in lines[1:81]), encoding="utf-8")
    tok = Tokenizer.train([root / "corpus.txt"], vocab_size=800, show_progress=False)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=64)
    BertForPreTraining(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {"model": root / "model", "train": root / "train.tsv", "dev": root / "dev.tsv"}


@pytest.fixture(scope="module")
def pt_data(tmp_path_factory, data_dir: Path) -> Path:
    """A prepared pre-training directory (32-token pairs) from the first 1,500 lines of the Lu Xun corpus, with a
    1,000-piece vocabulary: its size sets the checkpoints' (the small-disk test below counts on one fitting in its
    15 MiB and two not), so it is not test_pretrain.py's larger `small_data`."""
    root = tmp_path_factory.mktemp("faults_pt")
    corpus = root / "corpus.txt"
    lines = (data_dir / "pretrain_zh/luxun.txt").read_text(encoding="utf-8").splitlines()[:1500]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    Tokenizer.train([corpus], vocab_size=1000, show_progress=False).save_pretrained(root / "tok")
    prepare([corpus], root / "tok", root / "data", PrepareConfig(max_seq_length=32, seed=1), progress=False)
    return root / "data"


def finetune_args(d: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--task", "cls", "--model", str(d["model"]), "--train", str(d["train"]), "--dev", str(d["dev"]),
        "--out", str(out), "--epochs", "4", "--batch-size", "8", "--max-seq-length", "32", "--eval-every", "3",
        "--learning-rate", "1e-3", "--seed", "5", *extra,
    ]  # fmt: skip


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain", "--data", str(data), "--model", "tiny", "--out", str(out), "--max-steps", "30", "--batch-size",
        "8", "--log-every", "1", "--eval-every", "10", "--eval-instances", "16", "--save-every", "5", "--workers", "0",
        "--seed", "3", "--learning-rate", "1e-3", *extra,
    ]  # fmt: skip


@pytest.fixture(params=["finetune", "pretrain"])
def either_run(request, tmp_path: Path, cls_data: dict[str, Path], pt_data: Path) -> tuple[str, Path, list[str]]:
    """(command, its --out, `finetune_args` or `pretrain_args`): a test of both training commands."""
    out = tmp_path / "out"
    args = finetune_args(cls_data, out) if request.param == "finetune" else pretrain_args(pt_data, out)
    return request.param, out, args


def records(metrics: Path, split: str) -> list[dict]:
    if not metrics.is_file():
        return []
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("split", "train") == split]


def kill_when(proc: subprocess.Popen, ready, deadline_s: float = 120) -> None:
    """kill -9 `proc` as soon as `ready()` holds; fails when the process ended first."""
    deadline = time.time() + deadline_s
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = read_tensors(a), read_tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), f"{name} differs between {a} and {b}"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.fixture
def one_thread(torch_threads) -> None:
    """torch on one thread in this process, as in the killed processes (OMP_NUM_THREADS=1)."""
    torch_threads(1)


def without_speed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


# ------------------------------------------------------------------------------------------ kill -9, then --resume
def test_finetune_killed_at_a_random_step_resumes_exactly(
    tmp_path: Path, cls_data: dict[str, Path], bertkit, one_thread: None
) -> None:
    """24 steps, an evaluation and a checkpoint every 3. Killed at a random (seeded) step after a few evaluations,
    with what a kill during a save leaves added, --resume ends with the uninterrupted run's weights (exactly), its
    best model, best step and evaluations, and no temporary files."""
    code, _, err = bertkit(*finetune_args(cls_data, tmp_path / "a"))
    assert code == 0, err[-2000:]
    reference = json.loads((tmp_path / "a/metrics.json").read_text())

    out = tmp_path / "b"
    rng = random.Random(18)
    kill_at, delay = rng.randint(6, 15), rng.uniform(0, 0.05)
    proc = subprocess.Popen(bertkit_command(*finetune_args(cls_data, out)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    evals = out / "training/metrics.jsonl"

    def ready() -> bool:
        if not any(e["step"] >= kill_at for e in records(evals, "eval")):
            return False
        time.sleep(delay)  # somewhere in the steps, saves and evaluations that follow
        return True

    kill_when(proc, ready)
    assert latest_checkpoint(out / "training") is not None
    # What a kill while writing the best model or a checkpoint leaves behind (at most one of these is real).
    (out / ".model.safetensors.3f9a1c2e.tmp").write_bytes(b"\0" * 1_000_000)
    (out / ".tmp-best-model").mkdir(exist_ok=True)
    (out / ".tmp-best-model/model.safetensors").write_bytes(b"\0" * 1000)
    (out / "training/.tmp-checkpoint-0000099").mkdir()
    (out / "training/.tmp-checkpoint-0000099/model.safetensors").write_bytes(b"\0" * 1000)
    (out / "training/.latest.5e1f0a9b.tmp").write_text("checkpoint-0000099\n")

    code, stdout, err = bertkit(*finetune_args(cls_data, out, "--resume"))
    assert code == 0, err[-2000:]
    assert "resumed from" in stdout and "best dev accuracy" in stdout
    resumed = json.loads((out / "metrics.json").read_text())
    assert (resumed["best_step"], resumed["dev"]) == (reference["best_step"], reference["dev"])
    assert records(out / "training/metrics.jsonl", "eval") == records(tmp_path / "a/training/metrics.jsonl", "eval")
    # The logged training losses too: the line after the resume averages the steps before the kill as well.
    assert without_speed(records(out / "training/metrics.jsonl", "train")) == without_speed(
        records(tmp_path / "a/training/metrics.jsonl", "train")
    )
    assert_same_weights(tmp_path / "a/training/checkpoint-0000024", out / "training/checkpoint-0000024")
    assert_same_weights(tmp_path / "a", out)  # the best model
    assert training_leftovers(out) == []
    assert latest_checkpoint(out / "training").name == (out / "training/latest").read_text().strip()


def test_pretrain_killed_during_a_save_resumes_exactly(
    tmp_path: Path, pt_data: Path, bertkit, one_thread: None
) -> None:
    """Killed while a checkpoint is being written (its temporary folder seen; else at a random step), with the
    leftovers of a kill during the final model's write and the `latest` pointer's added: --resume ends with the
    uninterrupted run's model, exactly, and no temporary files."""
    code, _, err = bertkit(*pretrain_args(pt_data, tmp_path / "a"))
    assert code == 0, err[-2000:]

    out = tmp_path / "b"
    kill_at = random.Random(7).randint(8, 22)
    proc = subprocess.Popen(bertkit_command(*pretrain_args(pt_data, out)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip

    def ready() -> bool:
        steps = [x["step"] for x in records(out / "metrics.jsonl", "train")]
        step = steps[-1] if steps else 0
        return step >= kill_at + 5 or (step >= kill_at and any(out.glob(".tmp-checkpoint-*")))

    kill_when(proc, ready)
    assert latest_checkpoint(out) is not None
    (out / ".tmp-checkpoint-0000035").mkdir(exist_ok=True)
    (out / ".tmp-checkpoint-0000035/model.safetensors").write_bytes(b"\0" * 1000)
    (out / ".tmp-model").mkdir()
    (out / ".tmp-model/config.json").write_text("{")
    (out / ".latest.0a1b2c3d.tmp").write_text("checkpoint-0000035\n")

    code, stdout, err = bertkit(*pretrain_args(pt_data, out, "--resume"))
    assert code == 0, err[-2000:]
    assert "resumed from" in stdout
    assert_same_weights(tmp_path / "a/model", out / "model")
    assert_same_weights(tmp_path / "a/checkpoint-0000030", out / "checkpoint-0000030")
    for split in ("train", "eval"):
        a, b = records(tmp_path / "a/metrics.jsonl", split), records(out / "metrics.jsonl", split)
        assert without_speed(a) == without_speed(b)
    assert training_leftovers(out) == []


def test_finetune_resumes_only_with_its_own_settings(
    tmp_path: Path, cls_data: dict[str, Path], bertkit, one_thread: None
) -> None:
    """--resume with another learning rate, another label set in the same training file, or another task is one
    line naming the setting, with the run left as it was (another label set crashed the process: the old
    optimizer state was loaded into the new head); a longer run (--max-steps) continues, with a note."""
    train = tmp_path / "train.tsv"
    shutil.copy(cls_data["train"], train)
    data = {**cls_data, "train": train}
    out = tmp_path / "run"
    code, _, err = bertkit(*finetune_args(data, out, "--max-steps", "6"))
    assert code == 0, err[-2000:]
    before = snapshot(out)

    code, _, err = bertkit(*finetune_args(data, out, "--max-steps", "6", "--resume", "--learning-rate", "2e-3"))
    assert code == 2 and "started with --learning-rate 0.001, not 0.002" in err and "--overwrite" in err, err
    lines = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join([*lines, "又一个类别\t2"]) + "\n", encoding="utf-8")
    code, _, err = bertkit(*finetune_args(data, out, "--max-steps", "6", "--resume"))
    assert code == 2 and "started with labels ['0', '1'], not ['0', '1', '2']" in err, err
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = finetune_args(data, out, "--max-steps", "6", "--resume")
    code, _, err = bertkit(*[("regression" if a == "cls" else a) for a in args])  # labels 0 and 1 are numbers
    assert code == 2 and "started with --task 'cls', not 'regression'" in err, err
    changed = [("regression" if a == "cls" else "5" if a == "3" else a) for a in args]  # and --eval-every
    code, _, err = bertkit(*changed)  # the task is what is named, not a training setting that changed with it
    assert code == 2 and "started with --task 'cls', not 'regression'" in err, err
    assert snapshot(out) == before

    code, stdout, err = bertkit(*finetune_args(data, out, "--max-steps", "9", "--resume"))
    assert code == 0, err[-2000:]
    assert "started for 6 steps and now trains to step 9" in stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 9


def test_finetune_resume_keeps_the_best_model(
    tmp_path: Path, cls_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """Dev scores set by step (0.9 at step 4, then 0.5, 0.7): a run stopped after its step-8 checkpoint and resumed
    must keep the step-4 model as the best one, as the uninterrupted run does (the first evaluation after a resume
    is not better than 0.9)."""
    from bertkit.recipes import finetune
    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.tasks.classify import ClassificationTask
    from bertkit.tasks.settings import TaskSettings

    scores, trainers, stop_at = {4: 0.9, 8: 0.5, 12: 0.7}, [], []

    class Recording(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    real_evaluate = ClassificationTask.evaluate

    def scripted(self, *args, **kwargs):
        metrics = real_evaluate(self, *args, **kwargs)  # run it all the same: the same work as a real run
        step = trainers[-1].state.step
        if step in stop_at:
            raise KeyboardInterrupt  # as if killed here, after the step-8 checkpoint
        return {**metrics, "accuracy": scores[step]}

    monkeypatch.setattr(finetune, "Trainer", Recording)
    monkeypatch.setattr(ClassificationTask, "evaluate", scripted)

    def run(out: Path, resume: bool = False) -> dict:
        train = finetune_training(max_steps=12, eval_every=4, batch_size=8, learning_rate=1e-3, seed=5, progress=False)
        cfg = FinetuneConfig(
            task="cls", model=str(cls_data["model"]), train_file=str(cls_data["train"]),
            dev_file=str(cls_data["dev"]), out=str(out), resume=resume, train=train,
            settings=TaskSettings(max_seq_length=32),
        )  # fmt: skip
        return finetune.run_finetune(cfg)

    reference = run(tmp_path / "a")
    assert reference["best_step"] == 4 and reference["dev"]["accuracy"] == 0.9
    stop_at.append(12)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    assert latest_checkpoint(tmp_path / "b/training").name == "checkpoint-0000008"
    stop_at.clear()
    resumed = run(tmp_path / "b", resume=True)
    assert resumed["best_step"] == 4 and resumed["dev"]["accuracy"] == 0.9
    assert json.loads((tmp_path / "b/metrics.json").read_text())["best_step"] == 4
    assert_same_weights(tmp_path / "a", tmp_path / "b")  # the step-4 model, not the step-12 one
    assert_same_weights(tmp_path / "a/training/checkpoint-0000012", tmp_path / "b/training/checkpoint-0000012")


# ------------------------------------------------------------------------------------------ runs that diverge
def test_a_diverging_run_stops_with_one_line_and_saves_nothing_non_finite(either_run, bertkit) -> None:
    command, out, args = either_run
    args[args.index("--learning-rate") + 1] = "1e6"
    code, _, err = bertkit(*args)
    lines = [x for x in err.splitlines() if x.strip() and "it/s" not in x and "s/it" not in x]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"bertkit {command}: error: step "), lines
    assert "not a finite number" in lines[0] and "--learning-rate" in lines[0] and "--precision fp32" in lines[0]
    for weights in out.rglob("*.safetensors") if out.exists() else []:
        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights
    assert not out.exists()  # it had nothing to keep, so it left nothing behind


# ------------------------------------------------------------------------------------------ a full disk
def test_disk_full_on_a_real_small_filesystem(pt_data: Path, bertkit, small_disk) -> None:
    """Pre-training into a 15 MiB tmpfs: the first checkpoint (9.6 MB: weights, Adam's moments, tokenizer) fits, the
    second does not. One line, exit 2, the first checkpoint intact and still `latest`."""
    mount = small_disk("15m")
    args = pretrain_args(pt_data, mount / "run")
    args[args.index("--max-steps") + 1] = "10"
    code, _, err = bertkit(*args)
    errors = [x for x in err.splitlines() if "error" in x]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and errors[0].startswith("bertkit pretrain: error: disk full at "), errors
    assert latest_checkpoint(mount / "run") == mount / "run/checkpoint-0000005"
    read_tensors(mount / "run/checkpoint-0000005")  # complete and readable
    assert training_leftovers(mount / "run") == []


# ------------------------------------------------------------------------------------------ data loss
def test_finetune_into_its_own_model_or_data_folder_is_refused(
    tmp_path: Path, cls_data: dict[str, Path], bertkit
) -> None:
    model = tmp_path / "pretrained"
    shutil.copytree(cls_data["model"], model)
    before = snapshot(model)
    code, _, err = bertkit(*finetune_args({**cls_data, "model": model}, model, "--max-steps", "2"))
    assert code == 2 and f"--out {model} is the input {model}" in err
    code, _, err = bertkit(*finetune_args({**cls_data, "model": model}, model, "--overwrite"))
    assert code == 2 and "is the input" in err
    assert snapshot(model) == before  # byte for byte, the MLM head included
    code, _, err = bertkit(*finetune_args(cls_data, cls_data["train"].parent))
    assert code == 2 and "contains the input" in err


def test_finetune_into_a_non_empty_folder(tmp_path: Path, cls_data: dict[str, Path], bertkit) -> None:
    """A foreign non-empty --out is refused; an earlier fine-tuning is refused without --resume/--overwrite;
    --overwrite replaces only fine-tuning's own files (a fresh training/, no appended metrics) and keeps the rest."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = bertkit(*finetune_args(cls_data, out, "--max-steps", "2"))
    assert code == 2 and "is not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    short = ("--max-steps", "4", "--eval-every", "2")
    code, _, err = bertkit(*finetune_args(cls_data, out, *short, "--overwrite"))
    assert code == 0, err
    code, _, err = bertkit(*finetune_args(cls_data, out, *short))
    assert code == 2 and "already holds a fine-tuned model" in err and "--resume" in err and "--overwrite" in err
    (out / "training/checkpoint-0000096").mkdir()  # as an older, longer run would have left
    code, _, err = bertkit(*finetune_args(cls_data, out, "--max-steps", "2", "--eval-every", "1",
                                                         "--overwrite"))  # fmt: skip
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    steps = [r["step"] for r in records(out / "training/metrics.jsonl", "eval")]
    assert steps == [1, 2]  # this run's evaluations only
    assert [p.name for p in (out / "training").glob("checkpoint-*")] == ["checkpoint-0000002"]
    assert latest_checkpoint(out / "training").name == (out / "training/latest").read_text().strip()


def test_finetune_resume_with_nothing_to_resume(tmp_path: Path, cls_data: dict[str, Path], bertkit) -> None:
    """--resume where there is no checkpoint: a fresh start that says so (never `{}` with exit 0), or a refusal
    where a finished model would be replaced."""
    out = tmp_path / "out"
    short = ("--max-steps", "2", "--eval-every", "1")
    code, stdout, err = bertkit(*finetune_args(cls_data, out, *short, "--resume"))
    assert code == 0, err
    assert "nothing to resume" in stdout and "starting from step 0" in stdout
    assert json.loads(stdout.strip().splitlines()[-1])["accuracy"] >= 0
    # A run killed before its first checkpoint: its logs are discarded and it starts again.
    shutil.rmtree(out / "training/checkpoint-0000002")
    (out / "training/latest").unlink()
    (out / "metrics.json").unlink()
    code, stdout, err = bertkit(*finetune_args(cls_data, out, *short, "--resume"))
    assert code == 0 and "nothing to resume" in stdout, err
    assert [r["step"] for r in records(out / "training/metrics.jsonl", "eval")] == [1, 2]
    # A finished model without its checkpoints: --resume would replace it, so it is refused.
    shutil.rmtree(out / "training")
    before = snapshot(out)
    code, _, err = bertkit(*finetune_args(cls_data, out, *short, "--resume"))
    assert code == 2 and "nothing to resume" in err and "--overwrite" in err
    assert snapshot(out) == before


def test_pretrain_output_rules(tmp_path: Path, pt_data: Path, bertkit) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    short = ("--max-steps", "2", "--save-every", "0", "--eval-every", "0")
    code, _, err = bertkit(*pretrain_args(pt_data, out, *short))
    assert code == 2 and "is not empty" in err
    code, _, err = bertkit(*pretrain_args(pt_data, pt_data.parent, *short))
    assert code == 2 and "contains the input" in err
    code, stdout, err = bertkit(*pretrain_args(pt_data, out, *short, "--overwrite"))
    assert code == 0, err
    # --eval-every 0 evaluates at the end only (it did not evaluate at all, and printed a bare {})
    assert "held-out masked-LM accuracy" in stdout.splitlines()[-2]
    assert json.loads(stdout.splitlines()[-1])["eval_instances"] > 0
    # Finished, without checkpoints (--save-every 0): --resume would train again over model/, so it is refused.
    before = snapshot(out)
    code, _, err = bertkit(*pretrain_args(pt_data, out, *short, "--resume"))
    assert code == 2 and "nothing to resume" in err and "model/" in err
    assert snapshot(out) == before
    code, _, err = bertkit(*pretrain_args(pt_data, out, *short, "--overwrite"))
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert [r["step"] for r in records(out / "metrics.jsonl", "train")] == [1, 2]


# ------------------------------------------------------------------------------------------ what pretrain says
def test_pretrain_on_data_without_a_training_split(tmp_path: Path, pt_data: Path, bertkit) -> None:
    corpus = pt_data.parent / "corpus.txt"
    eval_only = tmp_path / "eval_only"
    prepare([corpus], pt_data.parent / "tok", eval_only, PrepareConfig(max_seq_length=32, eval_fraction=1),
            progress=False)  # fmt: skip
    code, _, err = bertkit(*pretrain_args(eval_only, tmp_path / "run"))
    assert code == 2 and "holds no training data, only a held-out split" in err and "bertkit evaluate" in err
    assert not (tmp_path / "run").exists()


def test_pretrain_without_a_held_out_split_reports_the_training_loss(tmp_path: Path, pt_data: Path, bertkit) -> None:
    corpus = pt_data.parent / "corpus.txt"
    data = tmp_path / "no_eval"
    prepare([corpus], pt_data.parent / "tok", data, PrepareConfig(max_seq_length=32, eval_fraction=0),
            progress=False)  # fmt: skip
    code, stdout, err = bertkit(*pretrain_args(data, tmp_path / "run", "--max-steps", "3"))
    assert code == 0, err
    assert "no held-out split" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["train_loss"] > 0 and summary["eval_instances"] == 0


def test_names_alone_never_make_a_folder_bertkits(tmp_path: Path, cls_data: dict[str, Path], pt_data: Path,
                                                  minilm_dir: Path, bertkit) -> None:  # fmt: skip
    """A folder is a command's own only by its owner mark (or a file only that command writes): folders of other
    programs that happen to hold training/, config.json, metrics.jsonl or tensorboard/ are neither resumed (which
    cleared them: 'nothing to resume' removed every entry of those names, exit 0) nor have those files replaced
    by --overwrite (an HF model's config.json and weights)."""
    project = tmp_path / "project"
    (project / "training").mkdir(parents=True)
    (project / "training/my_notes.txt").write_text("mine")
    (project / "config.json").write_text('{"mine": true}')
    logs = tmp_path / "logs"
    (logs / "tensorboard").mkdir(parents=True)
    (logs / "tensorboard/my_old_logs").write_text("mine")
    (logs / "metrics.jsonl").write_text('{"step": 1}\n')
    hf_model = tmp_path / "hf_model"
    shutil.copytree(minilm_dir, hf_model)
    before = {d: snapshot(d) for d in (project, logs, hf_model)}
    for args in (finetune_args(cls_data, project, "--max-steps", "2", "--resume"),
                 pretrain_args(pt_data, logs, "--resume"),
                 finetune_args(cls_data, hf_model, "--max-steps", "2", "--overwrite")):  # fmt: skip
        code, _, err = bertkit(*args)
        assert code == 2 and ("was not written by bertkit" in err or "did not write there" in err), err
    assert {d: snapshot(d) for d in (project, logs, hf_model)} == before


def test_pretrain_never_takes_a_fine_tuning_runs_checkpoints_for_its_own(
    tmp_path: Path, cls_data: dict[str, Path], pt_data: Path, bertkit
) -> None:
    # `pretrain --out FT/training --overwrite` replaced a fine-tuning run's checkpoints and logs, exit 0: the
    # folder has checkpoints, which pre-training runs from before the owner mark are recognised by.
    out = tmp_path / "ft"
    code, _, err = bertkit(*finetune_args(cls_data, out, "--max-steps", "3"))
    assert code == 0, err
    assert latest_checkpoint(out / "training") is not None
    before = snapshot(out)
    for flags in ((), ("--overwrite",), ("--resume",)):
        code, _, err = bertkit(*pretrain_args(pt_data, out / "training", "--max-steps", "2", *flags))
        assert code == 2 and ("was not written by bertkit pretrain" in err or "did not write there" in err), err
    assert snapshot(out) == before


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_a_checkpoint(either_run, bertkit) -> None:
    # `--overwrite` deleted the earlier run at the start: a new run that then failed (here: diverged at once) left
    # the folder empty, exit 2.
    from bertkit.files import SET_ASIDE, own_entries, set_aside
    from bertkit.recipes.finetune import OUTPUT_OWNS
    from bertkit.recipes.pretrain import PRETRAIN_OWNS

    command, out, args = either_run
    args += ["--max-steps", "3" if command == "finetune" else "6"]  # the last one counts
    code, _, err = bertkit(*args)
    assert code == 0, err
    before = snapshot(out)
    diverging = [*args, "--overwrite"]
    diverging[diverging.index("--learning-rate") + 1] = "1e6"
    code, _, err = bertkit(*diverging)
    assert code == 2 and "not a finite number" in err
    assert snapshot(out) == before and not (out / SET_ASIDE).exists()
    # A run killed after it set the earlier one aside (and wrote a log line): the next start puts it back first,
    # whether it then refuses to go on (no flag) or replaces it again.
    for again in (args, diverging):
        set_aside(out, own_entries(out, OUTPUT_OWNS if command == "finetune" else PRETRAIN_OWNS))
        (out / "metrics.jsonl" if command == "pretrain" else out / "metrics.json").write_text("the killed run's\n")
        code, _, err = bertkit(*again)
        assert code == 2 and snapshot(out) == before, err
    # A new run that saves a checkpoint replaces the earlier one for good, whatever happens after.
    code, _, err = bertkit(*args, "--overwrite")
    assert code == 0, err
    assert snapshot(out) != before and not (out / SET_ASIDE).exists()


def test_overwrite_never_removes_a_users_file_inside_a_folder_it_wrote(either_run, bertkit) -> None:
    # `--overwrite` replaced model/ (pretrain) or training/ (finetune) whole: a model card a user had put in it was
    # deleted with it, exit 0.
    command, out, args = either_run
    args += ["--max-steps", "2"]
    code, _, err = bertkit(*args)
    assert code == 0, err
    folder = out / ("model" if command == "pretrain" else "training")
    # A model card; a file of a name bertkit writes, in a folder of the user's.
    for mine in (folder / "README.md", folder / "my_variant" / "config.json"):
        mine.parent.mkdir(exist_ok=True)
        mine.write_text("mine\n")
        before = snapshot(out)
        code, _, err = bertkit(*args, "--overwrite")
        assert code == 2 and f"holds '{mine.relative_to(out)}', which bertkit {command} did not write" in err, err
        assert snapshot(out) == before
        mine.unlink()
    (folder / "my_variant").rmdir()  # moved away: the run is replaced as before
    code, _, err = bertkit(*args, "--overwrite")
    assert code == 0, err


def test_a_damaged_training_state_names_the_checkpoint_to_resume_from(tmp_path: Path, pt_data: Path, bertkit) -> None:
    # A truncated training_state.pt: --resume was a traceback from torch's zip reader, and said nothing of the
    # intact checkpoint before it.
    out = tmp_path / "run"
    code, _, err = bertkit(*pretrain_args(pt_data, out, "--max-steps", "10"))
    assert code == 0, err
    newest, older = latest_checkpoint(out), out / "checkpoint-0000005"
    assert newest is not None and newest.name == "checkpoint-0000010" and (older / "training_state.pt").is_file()
    state = newest / "training_state.pt"
    whole = state.read_bytes()
    for damaged in (whole[:100], b"", b"hello"):  # cut short, empty (a crash's usual leftover), not torch's at all
        state.write_bytes(damaged)
        code, _, err = bertkit(*pretrain_args(pt_data, out, "--max-steps", "12", "--resume"))
        assert code == 2 and err.count("\n") == 1, err
        assert f"{state}: damaged, cannot resume from it" in err and f"resume from {older.name}" in err, err
    shutil.move(newest, tmp_path / "damaged")  # as the message says
    code, _, err = bertkit(*pretrain_args(pt_data, out, "--max-steps", "12", "--resume"))
    assert code == 0 and latest_checkpoint(out).name == "checkpoint-0000012", err


def test_ctrl_c_before_the_first_checkpoint_leaves_the_same_command_free_to_start_again(either_run, bertkit) -> None:
    # The interrupt said "run the same command again to start over", and the same command then refused: "--out
    # already holds a run: pass --resume ... or --overwrite".
    command, out, args = either_run
    args += ["--max-steps", "2000", "--save-every" if command == "pretrain" else "--eval-every", "1000"]
    logged = out / ("metrics.jsonl" if command == "pretrain" else "training/metrics.jsonl")
    proc = start_bertkit(*args)
    deadline = time.time() + 120
    while not logged.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    err = interrupt(proc)
    assert proc.returncode == 130 and "before its first checkpoint: run the same command again" in err, err
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())  # as the run found it: not there
    # The last --max-steps is the one in force (pretrain_args has its own before the 2,000 added above).
    code, _, err = bertkit(*args, "--max-steps", "2")
    assert code == 0, err


def test_finetune_saves_checkpoints_between_evaluations(tmp_path: Path, cls_data: dict[str, Path], bertkit) -> None:
    # Checkpoints came only with evaluations (once per epoch): Ctrl-C in a long epoch kept nothing to resume.
    out = tmp_path / "out"
    args = finetune_args(cls_data, out, "--max-steps", "2000", "--eval-every", "1000", "--save-every", "3")
    proc = start_bertkit(*args)
    deadline = time.time() + 120
    while latest_checkpoint(out / "training") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    err = interrupt(proc)
    assert proc.returncode == 130 and "the same command with --resume (not --overwrite) resumes it" in err, err
    args[args.index("--max-steps") + 1] = str(int(latest_checkpoint(out / "training").name.split("-")[1]) + 2)
    code, out_text, err = bertkit(*args, "--resume")
    assert code == 0 and "resumed from" in out_text, err


def test_patience_without_dev_data_is_refused(tmp_path: Path, cls_data: dict[str, Path], bertkit) -> None:
    args = [a for a in finetune_args(cls_data, tmp_path / "out", "--patience", "2") if a != str(cls_data["dev"])]
    args.remove("--dev")
    code, _, err = bertkit(*args)
    assert code == 2 and "--patience counts dev evaluations without a better score: give --dev" in err, err
    assert not (tmp_path / "out").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path: Path, pt_data: Path, bertkit) -> None:
    # Both given: the run resumed and --overwrite was ignored, exit 0.
    code, _, err = bertkit(*pretrain_args(pt_data, tmp_path / "run", "--resume", "--overwrite"))
    assert code == 2 and "--resume and --overwrite together" in err and not (tmp_path / "run").exists()


def test_a_model_with_another_vocabulary_of_the_same_size_is_refused(tmp_path: Path, pt_data: Path, bertkit) -> None:
    # Two vocabularies of one size (e.g. cased and uncased): evaluate and pretrain --model DIR compared the sizes
    # alone and read the data's ids as other tokens, exit 0.
    from bertkit.data.pretraining import PretrainingData

    tok = PretrainingData(pt_data, "train").tokenizer
    swapped = list(tok.vocab)
    swapped[-1], swapped[-2] = swapped[-2], swapped[-1]
    model = tmp_path / "model"
    config = BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=64)
    BertForPreTraining(config).save_pretrained(model)
    Tokenizer(swapped).save_pretrained(model)
    refused = [
        ["evaluate", "--model", str(model), "--data", str(pt_data)],
        pretrain_args(pt_data, tmp_path / "run", "--model", str(model), "--max-steps", "1"),
    ]
    for args in refused:
        code, _, err = bertkit(*args)
        assert code == 2 and "vocabulary is not the one" in err and f"id {tok.vocab_size - 2}" in err, err
    assert not (tmp_path / "run").exists()
    tok.save_pretrained(model)  # the same vocabulary: accepted
    code, _, err = bertkit("evaluate", "--model", str(model), "--data", str(pt_data))
    assert code == 0, err
