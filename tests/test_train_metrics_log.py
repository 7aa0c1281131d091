"""A run's metrics log (bertkit.train.metrics_log): the JSON lines written and read back, cut short by a kill,
truncated for a resume, and the curves drawn from the keys the caller names. No shared data."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from bertkit.train.metrics_log import Curves, MetricsLog, curve_points, plot_metrics, read_metrics_log


def test_records_carry_their_step_and_a_resume_drops_later_ones(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write(step, {"loss": 1.0 / step})
    log.write(3, {"split": "eval", "accuracy": 0.5})
    with open(log.path, "a") as f:
        f.write('{"step": 4, "loss": 0.2')  # a kill in the middle of a line
    assert [r["step"] for r in read_metrics_log(log.path)] == [1, 2, 3, 3]
    log.truncate(2)
    assert read_metrics_log(log.path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert log.path.read_text().endswith("}\n")  # whole lines only, the cut one gone


def test_ctrl_c_inside_a_write_waits_for_the_record_and_closing_stays_prompt(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C raised inside TensorBoard's writer (a queue shared with the writer's thread) could lose the thread's
    wake-up, and closing the writer then waited for its next timed flush: a pre-training or fine-tuning run took up
    to two minutes to exit after Ctrl-C. The interrupt is now held until the record is written whole, to
    metrics.jsonl and TensorBoard, then raised; closing afterwards is prompt."""
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path)
    log.open_tensorboard()
    writer, written = log.tensorboard, []
    real = writer.add_scalar

    def add_scalar(tag: str, value: float, step: int) -> None:
        if not written:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the writer is at work
        real(tag, value, step)
        written.append(tag)

    monkeypatch.setattr(writer, "add_scalar", add_scalar)
    with pytest.raises(KeyboardInterrupt):
        log.write(1, {"loss": 1.5, "mlm_loss": 1.0, "nsp_loss": 0.5})
    assert written == ["train/loss", "train/mlm_loss", "train/nsp_loss"]
    assert read_metrics_log(log.path) == [{"step": 1, "loss": 1.5, "mlm_loss": 1.0, "nsp_loss": 0.5}]
    start = time.monotonic()
    log.close()
    assert time.monotonic() - start < 10 and log.tensorboard is None


def test_reading_passes_over_what_is_not_a_record(tmp_path: Path) -> None:
    assert read_metrics_log(tmp_path / "absent.jsonl") == []
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\nnot json\n\n{"step": 2}\n')
    assert read_metrics_log(path) == [{"step": 1}, {"step": 2}]


RECORDS = [
    {"step": 1, "loss": 3.0, "mlm_loss": 2.0, "nsp_loss": 1.0},
    {"step": 2, "loss": float("nan"), "mlm_loss": 1.5, "nsp_loss": 0.5},
    {"step": 2, "split": "eval", "mlm_loss": 1.8, "mlm_accuracy": 0.3, "nsp_accuracy": 0.6, "eval_instances": 64},
]


def test_the_curves_are_the_keys_passed_in() -> None:
    curves = Curves(train_losses=("loss", "mlm_loss", "absent"), held_out_losses=("mlm_loss",),
                    held_out_scores=("mlm_accuracy", "absent"))  # fmt: skip
    losses, scores = curve_points(RECORDS, curves)
    # The NaN loss is left out of its line; a key no record holds draws no line.
    assert losses == {"train loss": [(1, 3.0)], "train mlm_loss": [(1, 2.0), (2, 1.5)], "held-out mlm_loss": [(2, 1.8)]}
    assert scores == {"held-out mlm_accuracy": [(2, 0.3)]}


def test_without_curves_the_training_loss_alone() -> None:
    records = [*RECORDS, {"step": 3, "split": "eval", "pearson": -0.2, "f1": 0.4}]
    assert curve_points(records) == ({"train loss": [(1, 3.0)]}, {})
    # Scores are drawn in the order named, a correlation among them.
    _, scores = curve_points(records, Curves(held_out_scores=("pearson", "f1", "nsp_accuracy")))
    assert scores == {"held-out pearson": [(3, -0.2)], "held-out f1": [(3, 0.4)], "held-out nsp_accuracy": [(2, 0.6)]}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert plot_metrics(path, tmp_path / "curves.png", Curves(held_out_scores=("mlm_accuracy",)))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
