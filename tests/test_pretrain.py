"""Pre-training runs: exact resume after kill -9, HF-loadable checkpoints, evaluate output, bad input.

The killed runs, the torchrun runs and the run a killed one is compared with are `python -m bertkit.cli` processes
(`run_bertkit`, `bertkit_command`); the others run in this process (the `bertkit` fixture)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import bertkit_command, run_bertkit

from bertkit import Tokenizer
from bertkit.data.config import PrepareConfig
from bertkit.data.prepare import prepare
from bertkit.train.metrics_log import read_metrics_log
from bertkit.train.state import latest_checkpoint

STEPS = 120


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir: Path) -> Path:
    """The whole Lu Xun corpus prepared as 64-token pairs (seed 1) with a 3,000-piece vocabulary: the data of every
    pre-training run here, up to 120 steps of batch 8 (the pre-training faults use a smaller one: test_faults.py)."""
    root = tmp_path_factory.mktemp("pt")
    corpus = [data_dir / "pretrain_zh/luxun.txt"]
    Tokenizer.train(corpus, vocab_size=3000, show_progress=False).save_pretrained(root / "tok")
    prepare(corpus, root / "tok", root / "data", PrepareConfig(max_seq_length=64, seed=1), progress=False)
    return root / "data"


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain", "--data", str(data), "--model", "tiny", "--out", str(out), "--max-steps", str(STEPS),
        "--batch-size", "8", "--log-every", "1", "--eval-every", "40", "--eval-instances", "64", "--save-every", "10",
        "--workers", "0", "--seed", "3", "--learning-rate", "1e-3", *extra,
    ]  # fmt: skip


def train_losses(run: Path) -> dict[int, tuple]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {
        (r["step"], r.get("split", "train")): tuple(
            r[k] for k in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy") if k in r
        )
        for r in rows
    }


def steps_logged(run: Path) -> int:
    """The last step in a running run's log (its last line may be half written as it is read: passed over)."""
    records = read_metrics_log(run / "metrics.jsonl")
    return records[-1]["step"] if records else 0


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, small_data: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = run_bertkit(*pretrain_args(small_data, tmp_path / "a"), env=env)  # as the killed run computes
    assert r.status == 0, r.err[-2000:]
    reference = train_losses(tmp_path / "a")
    assert len([k for k in reference if k[1] == "train"]) == STEPS

    kill_at = random.Random().randint(25, 90)
    proc = subprocess.Popen(bertkit_command(*pretrain_args(small_data, tmp_path / "b")), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while steps_logged(tmp_path / "b") < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = steps_logged(tmp_path / "b")
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt is not None and int(ckpt.name.split("-")[1]) < killed_at < STEPS

    r = run_bertkit(*pretrain_args(small_data, tmp_path / "b", "--resume"), env=env)
    assert r.status == 0, r.err[-2000:]
    assert "resumed from" in r.out
    resumed = train_losses(tmp_path / "b")
    assert resumed.keys() == reference.keys()
    for key in sorted(reference):
        assert resumed[key] == reference[key], f"step {key}: {resumed[key]} != {reference[key]} (killed at {killed_at})"

    # Learning happened, and the run directory has what it promises.
    first = [reference[(s, "train")][0] for s in range(1, 11)]
    last = [reference[(s, "train")][0] for s in range(STEPS - 9, STEPS + 1)]
    assert sum(last) < sum(first)
    run = tmp_path / "a"
    assert (run / "curves.png").stat().st_size > 1000 and (run / "model/vocab.txt").is_file()
    assert any((run / "tensorboard").iterdir())


def test_checkpoint_loads_in_transformers_and_evaluate_prints_json(tmp_path: Path, small_data: Path, bertkit) -> None:
    import transformers

    args = pretrain_args(small_data, tmp_path / "run")
    args[args.index("--max-steps") + 1] = "12"
    r = bertkit(*args)
    assert r.status == 0, r.err[-2000:]
    done = r.out.strip().splitlines()
    # The end state in words, then the held-out metrics as JSON on the last line (for scripts).
    assert done[-2].startswith("pre-trained to step 12 of 12 (held-out masked-LM accuracy 0.")
    assert done[-2].endswith(f"model saved to {tmp_path / 'run/model'}")
    assert json.loads(done[-1])["eval_instances"] > 0
    ckpt = latest_checkpoint(tmp_path / "run")
    _, info = transformers.BertForPreTraining.from_pretrained(ckpt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    r = bertkit("evaluate", "--model", tmp_path / "run/model", "--data", small_data, "--out", tmp_path / "m.json")
    assert r.status == 0, r.err[-2000:]
    metrics = r.last_json()
    assert {"mlm_loss", "mlm_accuracy", "nsp_accuracy"} <= metrics.keys()
    assert 0 <= metrics["masked_accuracy"] <= 1 and 0 < metrics["masked_majority"] <= 1
    assert json.loads((tmp_path / "m.json").read_text()) == metrics


def test_model_that_does_not_match_the_tokenizer(tmp_path: Path, small_data: Path, bertkit) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"vocab_size": 1234, "hidden_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "intermediate_size": 128}))  # fmt: skip
    args = pretrain_args(small_data, tmp_path / "run")
    args[args.index("--model") + 1] = str(cfg)
    r = bertkit(*args)
    assert r.status == 2 and "Traceback" not in r.err
    assert "vocabulary of 1234" in r.err
    r = bertkit("pretrain", "--data", tmp_path, "--out", tmp_path / "x")
    assert r.status == 2 and "bertkit prepare" in r.err


def test_torchrun_ddp_on_cpu_and_resume_with_another_world_size(tmp_path: Path, small_data: Path, bertkit) -> None:
    """Two processes under torchrun (gloo): rank-aware data, one writer; a single process then resumes."""
    run = tmp_path / "ddp"
    args = pretrain_args(small_data, run)
    args[args.index("--max-steps") + 1] = "10"
    args[args.index("--save-every") + 1] = "5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = run_bertkit(*args, "--device", "cpu", processes=2, env=env, timeout=600)
    assert r.status == 0, r.err[-3000:]
    steps = [k[0] for k in train_losses(run) if k[1] == "train"]
    assert steps == list(range(1, 11)), steps  # one writer: each step logged once
    assert latest_checkpoint(run).name == "checkpoint-0000010"
    args[args.index("--max-steps") + 1] = "14"
    r = bertkit(*args, "--resume")
    assert r.status == 0, r.err[-3000:]
    assert "resumed from" in r.out and steps_logged(run) == 14, r.out[-2000:] + r.err[-2000:]


def test_torchrun_fsdp_matches_ddp_and_resumes_in_one_process(tmp_path: Path, small_data: Path, bertkit) -> None:
    """FSDP2 on two processes (gloo) trains exactly as DDP does (same losses, same saved weights); its checkpoints
    are full model directories that transformers loads and that a single process resumes without --fsdp."""
    import transformers

    from bertkit.checkpoint import read_tensors

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    losses, stdout = {}, {}
    for mode in ("ddp", "fsdp"):
        args = pretrain_args(small_data, tmp_path / mode, "--dropout", "0", "--device", "cpu")
        args[args.index("--max-steps") + 1] = "6"
        args[args.index("--save-every") + 1] = "3"
        extra = ["--fsdp"] if mode == "fsdp" else []
        r = run_bertkit(*args, *extra, processes=2, env=env, timeout=600)
        assert r.status == 0, r.err[-3000:]
        stdout[mode] = r.out
        losses[mode] = [v for (_, split), v in sorted(train_losses(tmp_path / mode).items()) if split == "train"]
    assert len(losses["fsdp"]) == 6, losses
    assert "sharded across 2 processes" in stdout["fsdp"] and "sharded" not in stdout["ddp"], stdout
    for a, b in zip(losses["ddp"], losses["fsdp"], strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4, losses
    ddp, fsdp = read_tensors(tmp_path / "ddp/model"), read_tensors(tmp_path / "fsdp/model")
    assert ddp.keys() == fsdp.keys() and max(float((ddp[k] - fsdp[k]).abs().max()) for k in ddp) < 1e-4
    _, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "fsdp/model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    args[args.index("--max-steps") + 1] = "8"
    r = bertkit(*args, "--resume")
    assert r.status == 0, r.err[-3000:]
    assert "resumed from" in r.out and steps_logged(tmp_path / "fsdp") == 8, r.out[-2000:] + r.err[-2000:]
    args[args.index("--max-steps") + 1] = "10"  # and back to two sharded processes
    r = run_bertkit(*args, "--fsdp", "--resume", processes=2, env=env, timeout=600)
    assert r.status == 0, r.err[-3000:]
    assert "resumed from" in r.out and steps_logged(tmp_path / "fsdp") == 10, r.out[-2000:] + r.err[-2000:]


def test_resume_without_nsp(tmp_path: Path, small_data: Path, bertkit) -> None:
    """Without NSP the pooler and NSP head never get a gradient, so the optimizer has no state for them: resuming
    must still work (the arms without NSP in the experiments resume this way)."""
    args = pretrain_args(small_data, tmp_path / "run", "--no-nsp")
    args[args.index("--max-steps") + 1] = "4"
    args[args.index("--save-every") + 1] = "2"
    r = bertkit(*args)
    assert r.status == 0, r.err[-3000:]
    args[args.index("--max-steps") + 1] = "6"
    r = bertkit(*args, "--resume")
    assert r.status == 0, r.err[-3000:]
    assert "resumed from" in r.out and steps_logged(tmp_path / "run") == 6


def test_next_token_batch_undoes_masking_shifts_and_reverses() -> None:
    import torch

    from bertkit.recipes.pretrain import next_token_batch

    # Row 0: [CLS] 5 [MASK]=6 [SEP] 7 [SEP]; row 1 is shorter and padded.
    batch = {
        "input_ids": torch.tensor([[2, 5, 4, 3, 7, 3], [2, 8, 3, 9, 3, 0]]),
        "mlm_labels": torch.tensor([[-100, -100, 6, -100, -100, -100], [-100] * 6]),
        "token_type_ids": torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]),
        "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 1, 0]]),
        "nsp_labels": torch.tensor([0, 1]),
    }
    l2r = next_token_batch(batch)
    assert l2r["input_ids"].tolist() == [[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 3, 0]]
    assert l2r["mlm_labels"].tolist() == [[5, 6, 3, 7, 3, -100], [8, 3, 9, 3, -100, -100]]
    r2l = next_token_batch(batch, reverse=True)
    assert r2l["input_ids"].tolist() == [[3, 7, 3, 6, 5, 2], [3, 9, 3, 8, 2, 0]]
    assert r2l["token_type_ids"].tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert r2l["mlm_labels"].tolist() == [[7, 3, 6, 5, 2, -100], [9, 3, 8, 2, -100, -100]]


def test_left_to_right_pretraining_learns_and_saves_a_causal_model(tmp_path: Path, small_data: Path, bertkit) -> None:
    from bertkit.config import BertConfig

    args = pretrain_args(small_data, tmp_path / "run", "--objective", "l2r", "--no-nsp")
    args[args.index("--max-steps") + 1] = "40"
    r = bertkit(*args)
    assert r.status == 0, r.err[-3000:]
    assert BertConfig.load(tmp_path / "run/model").is_decoder
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train = [r["mlm_loss"] for r in rows if r.get("split", "train") == "train" and "mlm_loss" in r]
    assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 0.5  # the next-token loss falls
    summary = json.loads((tmp_path / "run/model/bertkit_pretraining.json").read_text())
    assert summary["objective"] == "l2r"


def test_dropout_and_init_range_overrides_reach_the_model(
    tmp_path: Path, small_data: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    from bertkit.config import BertConfig
    from bertkit.model import BertForPreTraining, SelfAttention
    from bertkit.recipes import pretrain
    from bertkit.train.config import TrainConfig
    from bertkit.train.loop import Trainer

    trained = []

    class Recording(Trainer):  # the model the loop really trains, for the assertions below
        def __init__(self, model, *args, **kwargs):
            trained.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(pretrain, "Trainer", Recording)
    train = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=2, batch_size=4, learning_rate=1e-7, progress=False)
    cfg = pretrain.PretrainConfig(data=str(small_data), model="tiny", train=train, dropout=0.0, init_range=0.05)
    pretrain.run_pretrain(cfg)
    model = trained[0]
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(m.attn_dropout == 0.0 for m in model.modules() if isinstance(m, SelfAttention))
    # Dropout was this run's setting: the saved config keeps the preset's 0.1 for fine-tuning, the run records 0.
    config = BertConfig.load(tmp_path / "run/model")
    assert config.hidden_dropout_prob == 0.1 and config.attention_probs_dropout_prob == 0.1
    assert json.loads((tmp_path / "run/model/bertkit_pretraining.json").read_text())["dropout"] == 0.0
    assert config.initializer_range == 0.05
    weights = BertForPreTraining.from_pretrained(tmp_path / "run/model").bert.embeddings.word_embeddings.weight
    assert abs(weights.std().item() - 0.05) < 0.003  # drawn with the new std, not the preset's 0.02
    # Continuing from that model without --dropout runs with the config's 0.1, and says so.
    train.out_dir = str(tmp_path / "more")
    pretrain.run_pretrain(pretrain.PretrainConfig(data=str(small_data), model=str(tmp_path / "run/model"), train=train))
    assert "was pre-trained with dropout 0.0; this run uses the config's" in capsys.readouterr().out
    assert all(m.p == 0.1 for m in trained[1].modules() if isinstance(m, torch.nn.Dropout))
    # The record keeps the longest sequence the model has seen, across continued runs (positions beyond it are
    # untrained): 64 from the first run, still 64 after continuing on 32-token data.
    assert json.loads((tmp_path / "run/model/bertkit_pretraining.json").read_text())["max_seq_length"] == 64
    short = tmp_path / "data32"
    prepare([data_dir / "pretrain_zh/luxun.txt"], small_data.parent / "tok", short, PrepareConfig(max_seq_length=32))
    train.out_dir = str(tmp_path / "short")
    pretrain.run_pretrain(pretrain.PretrainConfig(data=str(short), model=str(tmp_path / "more/model"), train=train))
    assert json.loads((tmp_path / "short/model/bertkit_pretraining.json").read_text())["max_seq_length"] == 64


def test_pretraining_metrics_by_hand() -> None:
    """evaluate_pretraining on two fixed instances and a model whose predictions are known: every figure by hand."""
    import math
    from types import SimpleNamespace

    import numpy as np
    import torch

    from bertkit.recipes.pretrain import evaluate_pretraining

    mask_id, wrong_guess, vocab = 4, 7, 10

    class CopyOrSeven(torch.nn.Module):
        """Predicts each chosen token as its input token, or 7 where the input is [MASK]; NSP always 0."""

        config = SimpleNamespace(vocab_size=vocab)

        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, token_type_ids, attention_mask, mlm_labels):
            inputs = input_ids[mlm_labels != -100]
            guess = torch.where(inputs == mask_id, wrong_guess, inputs)
            logits = 5.0 * torch.nn.functional.one_hot(guess, vocab).float()
            return SimpleNamespace(mlm_logits=logits, nsp_logits=torch.tensor([[1.0, 0.0]]).repeat(len(input_ids), 1))

    def item(ids, labels, nsp):
        ids = np.array(ids)
        types = np.zeros_like(ids)
        return {"input_ids": ids, "token_type_ids": types, "mlm_labels": np.array(labels), "nsp_labels": nsp}

    class Data(list):
        tokenizer = SimpleNamespace(pad_id=0, mask_id=mask_id)

    data = Data(
        [
            item([1, 4, 5, 4, 2], [-100, 7, 5, 8, -100], 0),  # [MASK]->7 right, unchanged 5 right, [MASK]->8 wrong
            item([1, 4, 6, 2], [-100, 8, 9, -100], 1),  # [MASK]->8 wrong, random 6 (was 9) wrong
        ]
    )
    metrics = evaluate_pretraining(CopyOrSeven(), data)
    right = -math.log(math.exp(5) / (math.exp(5) + vocab - 1))
    wrong = -math.log(1 / (math.exp(5) + vocab - 1))
    assert metrics["mlm_loss"] == pytest.approx((2 * right + 3 * wrong) / 5, rel=1e-5)
    assert metrics["mlm_accuracy"] == pytest.approx(2 / 5)  # copying the unchanged token counts here
    assert metrics["masked_accuracy"] == pytest.approx(1 / 3)  # [MASK] positions only: 7 right; 8, 8 wrong
    assert metrics["masked_majority"] == pytest.approx(2 / 3)  # always answering 8
    assert metrics["nsp_accuracy"] == pytest.approx(1 / 2) and metrics["eval_instances"] == 2
