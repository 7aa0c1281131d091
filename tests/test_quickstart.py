"""The main job stays alive: a small-budget quickstart on the bundled data."""

from __future__ import annotations

import math
from pathlib import Path

from bertkit import BertModel, Tokenizer
from bertkit.tasks.quickstart import run_quickstart


def test_quickstart_smoke(tmp_path: Path) -> None:
    result = run_quickstart(tmp_path, budget=0.02)
    assert (tmp_path / "corpus/peoples_daily_199801.txt").stat().st_size > 10_000
    tok = Tokenizer.from_pretrained(tmp_path / "model")
    assert tok.vocab_size == result["vocab_size"] > 1000
    assert BertModel.from_pretrained(tmp_path / "model").config.vocab_size == tok.vocab_size
    assert abs(result["loss"] - math.log(tok.vocab_size) - math.log(2)) < 2.0  # untrained: near chance
    # Re-running reuses the finished corpus and vocabulary.
    before = (tmp_path / "tokenizer/vocab.txt").stat().st_mtime_ns
    run_quickstart(tmp_path, budget=0.02)
    assert (tmp_path / "tokenizer/vocab.txt").stat().st_mtime_ns == before
