"""The example scripts run end to end (at toy sizes), so what they show a newcomer keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_script(tmp_path: Path, data_dir: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = (data_dir / "pretrain_zh").glob("*.txt")
    text = "\n".join(sorted(lines)[0].read_text(encoding="utf-8").splitlines()[:3000])
    (corpus / "part.txt").write_text(text + "\n", encoding="utf-8")
    rows = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(rows[:301]) + "\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:1] + rows[301:401]) + "\n", encoding="utf-8")
    env = {**os.environ, "PRESET": "tiny", "VOCAB": "2000", "SEQ": "64", "STEPS": "30", "BATCH": "16", "EPOCHS": "1",
           "BERTKIT": f"{sys.executable} -m bertkit.cli"}  # fmt: skip
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
    r = subprocess.run(["bash", str(ROOT / "examples/pipeline.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "CORPUS_DIR" in r.stdout  # no arguments: the usage
