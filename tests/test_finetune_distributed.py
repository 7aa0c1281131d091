"""Fine-tuning under torchrun (two CPU processes, gloo): the same run as one process with the same global batch,
one evaluation per dev pass, one output directory; an odd number of examples does not leave one rank a step ahead."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import run_bertkit

from bertkit.checkpoint import read_tensors


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "training" / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_two_processes_fine_tune_as_one_with_the_same_global_batch(
    tiny_zh_pretrained: Path, data_dir: Path, tmp_path: Path
) -> None:
    rows = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("\n".join(rows[:162]) + "\n", encoding="utf-8")  # 161 reviews: one rank would get one more
    dev.write_text("\n".join(rows[:1] + rows[300:340]) + "\n", encoding="utf-8")
    common = ["finetune", "--task", "cls", "--model", tiny_zh_pretrained, "--train", train, "--dev", dev,
              "--max-steps", "20", "--eval-every", "10", "--learning-rate", "1e-3",
              "--dropout", "0", "--max-seq-length", "64", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = run_bertkit(*common, "--out", tmp_path / "one", "--batch-size", "8", env=env, timeout=600)
    two = run_bertkit(*common, "--out", tmp_path / "two", "--batch-size", "4", processes=2, env=env, timeout=600)
    assert one.status == 0 and two.status == 0, two.err[-3000:]
    # The first process speaks for the run: each note and the final metrics line once, as one process prints them.
    assert (
        two.out.replace(str(tmp_path / "two"), "OUT").splitlines()
        == one.out.replace(str(tmp_path / "one"), "OUT").splitlines()
    )
    a, b = _log(tmp_path / "one"), _log(tmp_path / "two")
    # One writer, one evaluation per dev pass: the same records, step by step.
    assert [(r["step"], r.get("split")) for r in a] == [(r["step"], r.get("split")) for r in b]
    assert sum(r.get("split") == "eval" for r in b) == 2
    # The mean over a global batch of 8 is the mean of two ranks' means over 4 (equal halves): the same numbers up
    # to float summation order, which 20 Adam steps carry along; measured differences are about 1e-7.
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "accuracy"):
            if k in x:
                assert y[k] == pytest.approx(x[k], abs=1e-5), (x["step"], k)
    wa, wb = read_tensors(tmp_path / "one"), read_tensors(tmp_path / "two")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-5
    assert not (tmp_path / "two" / "training" / "rank1").exists() and len(list((tmp_path / "two").iterdir())) == len(
        list((tmp_path / "one").iterdir())
    )
