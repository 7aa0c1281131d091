"""Faults inside the training loop, on a toy model and toy batches (no shared data, no tokenizer): weights that turn
non-finite are never saved, a full disk while saving the training state or pointing `latest` at a new checkpoint
leaves the previous checkpoint complete and `latest`, a log line cut short does not stop --resume, and pruning never
removes the checkpoint `latest` names. The same faults through the commands, on real data: test_faults.py."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from helpers import training_leftovers

from bertkit import BertkitError
from bertkit.train.config import TrainConfig
from bertkit.train.loop import Trainer
from bertkit.train.state import latest_checkpoint


class ToyModel(torch.nn.Linear):
    """A linear model that saves itself as a model directory: enough for the training loop's own checks."""

    def save_pretrained(self, path: Path) -> None:
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(Path(path) / "model.safetensors"))


def toy_trainer(tmp_path: Path, max_steps: int, save_every: int, keep: int = 2) -> Trainer:
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    data = [{"x": x[i : i + 8], "y": x[i : i + 8].sum(1, keepdim=True), "attention_mask": torch.ones(8, 1)}
            for i in range(0, 32, 8)]  # fmt: skip
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=max_steps, batch_size=8, save_every=save_every,
                      eval_every=0, log_every=1, keep_checkpoints=keep, progress=False, device="cpu")  # fmt: skip
    return Trainer(ToyModel(4, 1), cfg, lambda *_: iter(data),
                   lambda m, b: (torch.nn.functional.mse_loss(m(b["x"]), b["y"]), {}), 32)  # fmt: skip


def test_disk_full_while_saving_the_training_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a full disk as a RuntimeError whose context is the ENOSPC OSError (seen on a full tmpfs):
    the run ends with "disk full at RUN_DIR", the earlier checkpoint stays complete and `latest`, nothing half-written
    is left."""
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", full_disk)
    trainer = toy_trainer(tmp_path, max_steps=4, save_every=2)
    with pytest.raises(BertkitError, match=r"^disk full at .*run: checkpoint-0000004 was not written") as e:
        trainer.train()
    assert "checkpoint-0000002 is intact" in str(e.value) and "--resume" in str(e.value)
    run = tmp_path / "run"
    assert latest_checkpoint(run) == run / "checkpoint-0000002"
    assert (run / "latest").read_text().strip() == "checkpoint-0000002"
    assert training_leftovers(run) == []


def test_disk_full_while_pointing_latest_at_a_new_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """When `latest` cannot be rewritten, the checkpoint just written is removed again: `latest` still names the
    previous one, which --resume continues from (kept, the new one would have been taken for a later run's and
    removed at the next save, losing the work)."""
    import bertkit.train.loop as loop

    real_write, pointers = loop.atomic_write, []

    def full_disk_for_latest(path, write):
        if Path(path).name == "latest":
            pointers.append(1)
            if len(pointers) == 2:
                raise BertkitError(f"disk full at {path}: free some space")
        return real_write(path, write)

    monkeypatch.setattr(loop, "atomic_write", full_disk_for_latest)
    trainer = toy_trainer(tmp_path, max_steps=4, save_every=2)
    with pytest.raises(BertkitError, match=r"^disk full at .*latest"):
        trainer.train()
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "checkpoint-0000002"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000002"]
    assert latest_checkpoint(run) == run / "checkpoint-0000002"


def test_resume_after_a_log_line_was_cut_short(tmp_path: Path) -> None:
    """A kill or a full disk in the middle of a log write leaves half a JSON line: --resume failed on it with a
    JSONDecodeError traceback. The cut line is dropped with the other records past the checkpoint."""
    toy_trainer(tmp_path, max_steps=2, save_every=2).train()
    metrics = tmp_path / "run/metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr"')
    trainer = toy_trainer(tmp_path, max_steps=4, save_every=2)
    assert trainer.resume()
    trainer.train()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_weights_that_become_non_finite_are_never_saved(tmp_path: Path) -> None:
    """A step can leave the weights infinite while its loss and gradient were finite (here: set by hand); the
    checkpoint of that step is refused with the one line, and the earlier checkpoint stays the latest."""
    trainer = toy_trainer(tmp_path, max_steps=2, save_every=1)
    trainer.train()
    with torch.no_grad():
        trainer.raw_model.weight[0, 0] = float("inf")
    trainer.state.step = 3
    with pytest.raises(BertkitError, match=r"^step 3: weight weight holds NaN or infinity: training diverged"):
        trainer.save_checkpoint()
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-0000002"
    assert training_leftovers(tmp_path / "run") == []


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_loss_stops_the_run_even_when_its_gradient_is_finite(tmp_path: Path, bad: float) -> None:
    """An infinite loss can come with a finite gradient (a constant overflowed; fp16 loss scaling skips the steps
    whose gradient is infinite): the loss itself is checked, and the run stops before the optimizer steps."""
    trainer = toy_trainer(tmp_path, max_steps=3, save_every=1)
    mse = trainer.loss_fn
    trainer.loss_fn = lambda m, b: (mse(m, b)[0] + (bad if trainer.state.step == 1 else 0.0), {})
    before = trainer.raw_model.weight.detach().clone()
    with pytest.raises(BertkitError, match=rf"^step 2: the training loss is {bad}, not a finite number"):
        trainer.train()
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-0000001"
    assert not torch.equal(trainer.raw_model.weight, before) and torch.isfinite(trainer.raw_model.weight).all()


def test_latest_always_names_a_checkpoint_that_exists(tmp_path: Path) -> None:
    """A checkpoint folder of a later step (a run abandoned at an earlier point) must not make pruning delete the
    checkpoint just written, as it did (`latest` then named a checkpoint that no longer existed)."""
    stale = tmp_path / "run/checkpoint-0000096"
    stale.mkdir(parents=True)
    (stale / "training_state.pt").write_bytes(b"x")
    trainer = toy_trainer(tmp_path, max_steps=4, save_every=2, keep=1)
    trainer.train()
    run = tmp_path / "run"
    assert (run / (run / "latest").read_text().strip() / "training_state.pt").is_file()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000004"]


def test_a_log_file_gets_the_bar_rarely_and_its_last_state(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Standard error to a file (capsys: no terminal): every logged step redrew the bar, whatever its interval.
    trainer = toy_trainer(tmp_path, max_steps=60, save_every=0)
    trainer.cfg.progress = True
    trainer.train()
    shown = [d for d in capsys.readouterr().err.split("\r") if d.startswith("train:")]
    assert len(shown) <= 3, shown
    assert "60/60" in shown[-1] and "loss=" in shown[-1]


def test_the_bar_shows_the_time_budget_left(tmp_path: Path) -> None:
    # With --max-minutes the bar's ETA (steps left at the current rate) promised minutes the budget did not have.
    import time

    trainer = toy_trainer(tmp_path, max_steps=2, save_every=0)
    assert "budget left" not in trainer._bar_fields()
    trainer.cfg.max_minutes = 2.0
    trainer._started = time.perf_counter() - 30.5
    assert trainer._bar_fields()["budget left"] in ("1:29", "1:28")
    trainer._started = time.perf_counter() - 300
    assert trainer._bar_fields()["budget left"] == "0:00"
