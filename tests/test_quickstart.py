"""The main job stays alive: a small-budget quickstart on the bundled data, end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from bertkit.data.tasks import read_conll
from bertkit.tasks.quickstart import FILL_MASK_EXAMPLE, QuickstartPlan, run_quickstart


def test_quickstart_small_budget(tmp_path: Path) -> None:
    result = run_quickstart(tmp_path, budget=0.02, progress=False)
    assert (tmp_path / "corpus/peoples_daily_199801.txt").stat().st_size > 1_000_000
    for name in ("sentiment", "ner"):
        for init in ("pretrained", "random"):
            assert 0.0 <= result["results"][name][init] <= 1.0
            by_lr = result["results"][name][f"{init}_by_lr"]
            assert len(by_lr) == len(QuickstartPlan().finetune_lrs)
            assert result["results"][name][init] == max(by_lr.values())  # the best on dev is reported
    assert result["results"]["sentiment"]["pretrained"] > result["majority_baseline"]["sentiment"] - 0.2
    ner = read_conll(tmp_path / "tasks/ner_train.txt")
    tags = {t for s in ner for t in s.tags}
    assert {"B-PER", "I-PER", "B-LOC", "B-ORG"} <= tags
    top = result["fill_mask"]["top5"]
    assert len(top) == 5 and all(a[1] >= b[1] for a, b in itertools.pairwise(top))
    assert result["fill_mask"]["text"] == FILL_MASK_EXAMPLE
    table = (tmp_path / "results.md").read_text()
    assert "pre-trained" in table and "random init" in table
    assert json.loads((tmp_path / "results.json").read_text())["results"] == result["results"]
    # Re-running reuses every finished stage.
    finished = ["tokenizer/vocab.txt", "data/manifest.json", "pretrain/model/model.safetensors"]
    finished.append("finetune/ner_random_lr0.001/metrics.json")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / f for f in finished)}
    again = run_quickstart(tmp_path, budget=0.02, progress=False)
    assert again["results"] == result["results"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
