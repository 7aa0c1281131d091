"""The main job stays alive: a small-budget quickstart on the bundled data, end to end."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import pytest

from bertkit.data.task_files import read_conll
from bertkit.errors import BertkitError
from bertkit.recipes.quickstart import FILL_MASK_EXAMPLE, QuickstartPlan, run_quickstart


def test_quickstart_small_budget(tmp_path: Path, capsys: pytest.CaptureFixture, bertkit) -> None:
    result = run_quickstart(tmp_path, budget=0.02, progress=False)
    # Pre-trained on 64-token pairs, fine-tuned at 128: expected here, so said once in the stage's heading, not
    # as a note by each of the fine-tuning runs.
    out = capsys.readouterr().out
    assert out.count("positions 64-127, never seen in pre-training, are learned while fine-tuning") == 1
    assert "note:" not in out, [line for line in out.splitlines() if "note:" in line]
    assert (tmp_path / "corpus/peoples_daily_199801.txt").stat().st_size > 1_000_000
    for name in ("sentiment", "ner"):
        for init in ("pretrained", "random"):
            assert 0.0 <= result["results"][name][init] <= 1.0
            by_lr = result["results"][name][f"{init}_by_lr"]
            assert len(by_lr) == len(QuickstartPlan().finetune_lrs)
            assert result["results"][name][init] == max(by_lr.values())  # the best on dev is reported
            scores = result["results"][name][f"{init}_scores"]
            assert len(scores) == QuickstartPlan().finetune_seeds[name]
            assert result["results"][name][init] == pytest.approx(sum(scores) / len(scores))
    assert result["results"]["sentiment"]["pretrained"] > result["majority_baseline"]["sentiment"] - 0.2
    ner = read_conll(tmp_path / "tasks/ner_train.txt")
    tags = {t for s in ner for t in s.tags}
    assert {"B-PER", "I-PER", "B-LOC", "B-ORG"} <= tags
    top = result["fill_mask"]["top5"]
    assert len(top) == 5 and all(a[1] >= b[1] for a, b in itertools.pairwise(top))
    assert result["fill_mask"]["text"] == FILL_MASK_EXAMPLE
    table = (tmp_path / "results.md").read_text()
    assert "pre-trained" in table and "random init" in table
    # A fixed number of pre-training steps, not a time cap: the table does not depend on the machine's speed.
    assert result["pretraining_steps"]["done"] == result["pretraining_steps"]["planned"] == 80
    assert "pre-training ran all 80 planned steps" in table
    assert json.loads((tmp_path / "results.json").read_text())["results"] == result["results"]
    assert [Path(p).name for p in result["paths"]["corpus"]] == ["peoples_daily_199801.txt", "reviews_unlabelled.txt"]
    # Re-running reuses every finished stage.
    finished = ["tokenizer/vocab.txt", "data/manifest.json", "pretrain/model/model.safetensors"]
    finished += (
        "finetune/ner_random_lr0.001_seed0/metrics.json",
        "finetune/sentiment_pretrained_lr0.001_seed2/metrics.json",
    )
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / f for f in finished)}
    again = run_quickstart(tmp_path, budget=0.02, progress=False)
    assert again["results"] == result["results"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # ...but not for another run's settings: those would mix two runs' models and results.
    with pytest.raises(BertkitError, match=re.escape("--budget 0.02 --seed 0, not --budget 0.03 --seed 0")):
        run_quickstart(tmp_path, budget=0.03, progress=False)
    with pytest.raises(BertkitError, match=re.escape("--budget 0.02 --seed 0, not --budget 0.02 --seed 1")):
        run_quickstart(tmp_path, budget=0.02, seed=1, progress=False)
    r = bertkit("quickstart", "--out", tmp_path, "--budget", "0.02", "--max-minutes", "5")
    assert r.status == 2 and "not --budget 0.02 --seed 0 --max-minutes 5;" in r.err  # a time limit is another run
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --max-minutes stops pre-training early, and the results say so in words. The limited run starts from this
    # run's data and fine-tuning folders (copied, run.json given the limit), which keeps this test fast: only
    # pre-training, what this part checks, runs again.
    limited = tmp_path / "limited"
    shutil.copytree(tmp_path, limited, ignore=lambda d, names: {"pretrain", "limited", "results.md", "results.json"})
    run = json.loads((tmp_path / "run.json").read_text())
    (limited / "run.json").write_text(json.dumps({**run, "max_minutes": 1e-4}))
    stopped = run_quickstart(limited, budget=0.02, progress=False, max_minutes=1e-4)
    note = "pre-training stopped by --max-minutes 0.0001 at step 1 of 80; results depend on this machine's speed"
    assert note in capsys.readouterr().out and note in (limited / "results.md").read_text()
    assert stopped["pretraining_steps"] == {**stopped["pretraining_steps"], "done": 1, "planned": 80,
                                            "stopped_early": True}  # fmt: skip
    # Pre-training ran without dropout, yet both models fine-tune with BERT's 0.1 from their configs.
    for model in ("pretrain/model", "random_init"):
        config = json.loads((tmp_path / model / "config.json").read_text())
        assert config["hidden_dropout_prob"] == config["attention_probs_dropout_prob"] == 0.1
    record = json.loads((tmp_path / "pretrain/model/bertkit_pretraining.json").read_text())
    assert record["dropout"] == 0.0
    assert record["nsp_weight"] == 0.1  # the plan's: NSP at weight 1 held the masked LM on its plateau
    assert record["max_seq_length"] == QuickstartPlan().max_seq_length


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BertkitError, match=r"not empty and has no run\.json"):
        run_quickstart(tmp_path, budget=0.02, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    (tmp_path / "run.json").write_text("not json")  # a traceback, exit 1
    with pytest.raises(BertkitError, match=r"run\.json: not valid JSON"):
        run_quickstart(tmp_path, budget=0.02, progress=False)
    assert (tmp_path / "run.json").read_text() == "not json"
