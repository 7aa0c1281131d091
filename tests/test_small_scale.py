"""The small-scale pre-training pipeline that the quickstart, the experiments and the benchmarks share: each stage
cached by its output, the random-initialisation twin, and the plan records that finished folders are matched by."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.config import BertConfig
from bertkit.data.task_files import TextExample
from bertkit.metrics import majority_accuracy
from bertkit.recipes.quickstart import QuickstartPlan
from bertkit.recipes.small_scale import (
    PretrainingPlan,
    SmallScalePipeline,
    held_out_evals,
    random_init_twin,
)


def test_quickstart_plan_record_is_unchanged() -> None:
    # A finished quickstart folder is reused only when its run.json holds this very plan: a renamed, added or
    # dropped field would make every existing folder refuse to continue.
    assert json.loads(json.dumps(asdict(QuickstartPlan()))) == {
        "preset": "tiny", "vocab_size": 8000, "max_seq_length": 64, "pretrain_steps": 4000, "pretrain_batch": 32,
        "pretrain_lr": 0.001, "init_range": 0.05, "nsp_weight": 0.1, "train_examples": {"sentiment": 500, "ner": 3000},
        "dev_examples": 1000, "finetune_epochs": 3.0, "ner_epochs": 5.0, "finetune_lrs": [0.001],
        "finetune_seeds": {"sentiment": 3, "ner": 1},
    }  # fmt: skip


def test_majority_accuracy_predicts_the_commonest_training_label() -> None:
    train = [TextExample("a", None, "pos"), TextExample("b", None, "pos"), TextExample("c", None, "neg")]
    dev = [TextExample("d", None, "neg"), TextExample("e", None, "pos"), TextExample("f", None, "neg")]
    assert majority_accuracy([ex.label for ex in train], [ex.label for ex in dev]) == pytest.approx(1 / 3)


def test_pipeline_stages_are_cached_and_the_twin_is_freshly_initialised(tmp_path: Path) -> None:
    plan = PretrainingPlan(vocab_size=1200, pretrain_steps=4, pretrain_batch=8)
    pipeline = SmallScalePipeline(tmp_path, plan, train_examples=40, dev_examples=20, corpus_paragraphs=300,
                                  progress=False)  # fmt: skip
    corpus = pipeline.corpus()
    # News, then the reviews written beside the labelled sets: those outside the sentiment dev set.
    assert corpus == [tmp_path / "corpus" / "peoples_daily_199801.txt", pipeline.tasks()["reviews_unlabelled"]]
    assert sum(1 for line in corpus[0].read_text(encoding="utf-8").splitlines() if line) == 300  # paragraphs

    model = pipeline.pretrain(tmp_path / "run", seed=0, evals=2, checkpoints=2)
    evals = held_out_evals(tmp_path / "run")
    assert [r["step"] for r in evals] == [2, 4] and all("mlm_accuracy" in r for r in evals)
    record = json.loads((model / "bertkit_pretraining.json").read_text())
    assert record["dropout"] == 0.0 and record["nsp_weight"] == 0.1 and record["max_seq_length"] == 64
    assert BertConfig.load(model).initializer_range == plan.init_range

    written = [tmp_path / p for p in ("corpus/peoples_daily_199801.txt", "tokenizer/vocab.txt",
                                      "data/manifest.json", "run/model/model.safetensors")]  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in written}
    assert pipeline.pretrain(tmp_path / "run", seed=0, evals=2, checkpoints=2) == model  # finished: read back
    assert {p: p.stat().st_mtime_ns for p in written} == stamps

    twin = random_init_twin(model, tmp_path / "twin", seed=0)
    assert BertConfig.load(twin).to_dict() == BertConfig.load(model).to_dict()
    assert (twin / "vocab.txt").read_text() == (model / "vocab.txt").read_text()
    trained, fresh = load_file(model / "model.safetensors"), load_file(twin / "model.safetensors")
    assert trained.keys() == fresh.keys() and any(not torch.equal(trained[k], fresh[k]) for k in trained)
    again = load_file(random_init_twin(model, tmp_path / "twin2", seed=0) / "model.safetensors")
    assert all(torch.equal(again[k], fresh[k]) for k in fresh)  # the seed fixes the twin
