"""The example scripts run end to end (at toy sizes), so what they show a newcomer keeps working."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import BERTKIT_COMMAND

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_script(tmp_path: Path, data_dir: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = (data_dir / "pretrain_zh").glob("*.txt")
    text = "\n".join(sorted(lines)[0].read_text(encoding="utf-8").splitlines()[:1500])
    (corpus / "part.txt").write_text(text + "\n", encoding="utf-8")
    rows = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(rows[:121]) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:1] + rows[301:401]) + "\n", encoding="utf-8")
    env = {**os.environ, "PRESET": "tiny", "VOCAB": "2000", "SEQ": "64", "STEPS": "10", "BATCH": "16", "EPOCHS": "1",
           "BERTKIT": " ".join(BERTKIT_COMMAND)}  # fmt: skip
    command = ["bash", str(ROOT / "examples/pipeline.sh"), str(corpus), str(tmp_path / "train.tsv"),
               str(tmp_path / "dev.tsv"), str(tmp_path / "out")]  # fmt: skip
    r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    assert "accuracy" in json.loads((out / "dev_metrics.json").read_text())
    assert len((out / "dev_predictions.jsonl").read_text().splitlines()) == 100
    assert (out / "cls.onnx").stat().st_size > 0 and '"masks"' in r.stdout
    stages = [out / "tokenizer/vocab.txt", out / "data/manifest.json", out / "pretrain/model/model.safetensors",
              out / "cls/model.safetensors"]  # fmt: skip
    written = [p.stat().st_mtime_ns for p in stages]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.stat().st_mtime_ns for p in stages] == written  # a re-run skips every finished stage
    # A fine-tuning stage interrupted after its last checkpoint (no metrics.json yet): the re-run resumes it.
    (out / "cls/metrics.json").unlink()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout and (out / "cls/metrics.json").is_file()
    r = subprocess.run(["bash", str(ROOT / "examples/pipeline.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "CORPUS_DIR" in r.stdout  # no arguments: the usage


def test_pipeline_script_finds_the_bertkit_that_make_installed(tmp_path: Path) -> None:
    """`make` installs into .venv, so a fresh clone has no `bertkit` on the PATH: the script then uses the checkout's
    .venv/bin/bertkit (it failed with "bertkit: command not found", exit 127), and without either says what to do."""
    path = "/usr/bin:/bin"
    if shutil.which("bertkit", path=path):
        pytest.skip(f"a bertkit is installed system-wide ({shutil.which('bertkit', path=path)})")
    checkout = tmp_path / "checkout"
    (checkout / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "examples/pipeline.sh", checkout / "examples/pipeline.sh")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part.txt").write_text("一句话。\n", encoding="utf-8")
    args = [str(corpus), str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv"), str(tmp_path / "out")]
    env = {"PATH": path, "HOME": str(tmp_path)}  # no BERTKIT, no bertkit on the PATH
    command = ["bash", str(checkout / "examples/pipeline.sh"), *args]

    r = subprocess.run(command, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "bertkit not found" in r.stderr and "source .venv/bin/activate" in r.stderr

    fake = checkout / ".venv/bin/bertkit"  # stands in for the installed command: records its arguments, fails
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "called"}\nexit 3\n')
    fake.chmod(0o755)
    r = subprocess.run(command, env=env, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr  # the first stage ran it, and the script stopped at its failure
    assert (tmp_path / "called").read_text().startswith(f"vocab --corpus {corpus / 'part.txt'} ")
