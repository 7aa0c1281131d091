"""The claim experiments: their building blocks checked directly, and every experiment run end to end at the
`test` scale (seconds per arm) so that the code stays alive. The committed reports come from the default scale."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertConfig, BertModel
from bertkit.data.task_files import TaggedSentence
from bertkit.errors import BertkitError
from experiments.claims import EXPERIMENTS
from experiments.index import write_index
from experiments.models import ConcatBiLM, char_window_ner_f1, embedding_matrix
from experiments.report import verdict
from experiments.workspace import BERT, SCALES, Workspace


def test_verdict_compares_means_against_the_spread() -> None:
    assert "**held**" in verdict("x", [0.80, 0.82, 0.81], [0.70, 0.71, 0.69])
    assert "**held only within noise**" in verdict("x", [0.80, 0.84, 0.76], [0.79, 0.80, 0.78])
    assert "**did not hold**" in verdict("x", [0.70, 0.71], [0.70, 0.71])
    assert "**did not hold**" in verdict("x", [0.60, 0.61], [0.70, 0.71])


def test_concat_bilm_sees_left_context_forward_and_right_context_backward() -> None:
    """Token t's features: the left-to-right half depends on tokens <= t only, the right-to-left half on >= t."""
    torch.manual_seed(0)
    cfg = BertConfig.preset("tiny", vocab_size=100, max_position_embeddings=32, is_decoder=True, num_hidden_layers=1)
    model = ConcatBiLM(BertModel(cfg), BertModel(cfg), num_labels=3, per_token=True, dropout=0.0).eval()
    feats = {}
    model.classifier.register_forward_hook(lambda m, inp, out: feats.__setitem__("h", inp[0]))
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0, 0], [2, 20, 21, 22, 23, 24, 25, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        model(ids, attention_mask=mask)
        h = feats["h"].clone()
        changed = ids.clone()
        changed[:, 3] = 50
        model(changed, attention_mask=mask)
        h2 = feats["h"]
    H = cfg.hidden_size
    moved = (h2 - h).abs().amax(-1)  # (B, T)
    fwd, bwd = (h2 - h)[..., :H].abs().amax(-1), (h2 - h)[..., H:].abs().amax(-1)
    assert fwd[:, :3].max() < 1e-6 and fwd[:, 3:6].min() > 1e-4  # forward: only from position 3 on
    assert bwd[0, 4:6].max() < 1e-6 and bwd[:, :4].min() > 1e-4  # backward: only up to position 3
    assert moved[0, 6:].max() == 0  # padding untouched


def test_word2vec_matrix_is_rescaled_to_bert_init() -> None:
    class Vectors:  # the part of gensim's KeyedVectors that embedding_matrix reads
        vector_size = 4
        key_to_index: ClassVar[dict] = {"a": 0, "b": 1}

        def __getitem__(self, key):
            return np.array([1.0, -2.0, 3.0, 0.5]) * (1 if key == "a" else -1)

    class Tok:
        vocab: ClassVar[list] = ["[PAD]", "a", "b", "c"]

    m = embedding_matrix(Vectors(), Tok(), std=0.02)
    assert m.shape == (4, 4)
    assert abs(float(m[1:3].std(unbiased=False)) - 0.02) < 1e-6
    assert torch.allclose(m[1], -m[2])


def test_char_window_ner_baseline_learns_context_and_scores_entities() -> None:
    # 京 after 北 is a location, 京 after 小 is not: only the window features can tell them apart.
    def sent(prefix: str) -> TaggedSentence:
        loc = prefix == "北"
        return TaggedSentence(
            [*"我去", prefix, "京", "了"], ["O", "O", "B-LOC" if loc else "O", "I-LOC" if loc else "O", "O"]
        )

    train = [sent(p) for p in "北小" * 20]
    assert char_window_ner_f1(train, [sent("北"), sent("小")]) == 1.0
    # Scored by entity, not by token: gold spans one character off the predicted 北京 score nothing.
    assert char_window_ner_f1(train, [TaggedSentence([*"我去北京了"], ["O", "O", "O", "B-LOC", "I-LOC"])]) == 0.0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_dir: Path) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("exp"), replace(SCALES["test"], seeds=2), data_dir, progress=False)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_runs_and_writes_its_report(workspace: Workspace, tmp_path: Path, name: str) -> None:
    # Two seeds where the arms are first trained, one after (the suite's time); the arms are shared and cached.
    workspace.scale.seeds = 2 if name == "pretraining" else 1
    path = EXPERIMENTS[name](workspace).write(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert "## What held and what did not" in text and "**" in text  # verdicts were computed
    assert "± " in text  # mean ± std over seeds
    images = re.findall(r"^!\[.*\]\((\S+\.png)\)$", text, flags=re.M)
    assert images and all((tmp_path / png).stat().st_size > 1000 for png in images)  # the PNGs exist
    raw = json.loads((tmp_path / f"{name}.json").read_text())
    assert raw
    # The figures of the report's notes are in its JSON too, so that each one can be checked against a file.
    notes_data = {"bidirectional": ("mlm_no_nsp_heldout_at_end", "l2r_heldout_at_end", "fill_mask"),
                  "nsp": ("nsp_accuracy_curve", "bert_masked_majority", "mlm_no_nsp_masked_majority")}  # fmt: skip
    assert set(notes_data.get(name, ())) <= raw.keys(), sorted(raw)
    index = write_index(tmp_path, list(EXPERIMENTS)).read_text(encoding="utf-8")
    assert f"]({name}.md)" in index and f"## {name}: not run yet" not in index  # linked, with its verdicts


def test_each_seed_is_its_own_pretraining_run_and_arm_definitions_are_checked(workspace: Workspace) -> None:
    # The spread over seeds must cover pre-training: seed 1 of an arm starts from other weights and data order.
    w0, w1 = (load_file(workspace.pretrain(BERT, seed) / "model.safetensors") for seed in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert json.loads((workspace.pretrain(BERT, 1).parent / "arm.json").read_text())["seed"] == 1
    # A cached run of the same name made with another definition is never reused under the new one.
    (workspace.root / "pretrain" / "bert" / "seed5").mkdir(parents=True)
    (workspace.root / "pretrain" / "bert" / "seed5" / "arm.json").write_text(
        json.dumps({"name": "bert", "nsp_weight": 1})
    )
    with pytest.raises(BertkitError, match="another arm definition"):
        workspace.pretrain(BERT, 5)
    # Likewise a cached fine-tuning run made from another model than this seed's arm.
    workspace.finetune("bert", workspace.pretrain(BERT, 0), "cls", seed=0)  # cached, or seconds at this scale
    with pytest.raises(BertkitError, match=r"was fine-tuned from .*seed0/model, not .*seed1/model"):
        workspace.finetune("bert", workspace.pretrain(BERT, 1), "cls", seed=0)


def test_workspace_refuses_cached_runs_of_another_scale(tmp_path: Path) -> None:
    Workspace(tmp_path, SCALES["test"], progress=False)
    Workspace(tmp_path, replace(SCALES["test"], seeds=5), progress=False)  # more seeds reuse the cached ones
    with pytest.raises(BertkitError, match="another `test` scale"):
        Workspace(tmp_path, replace(SCALES["test"], pretrain_steps=7), progress=False)
    (tmp_path / "old" / "test" / "tokenizer").mkdir(parents=True)  # any file: vocabulary and data are cached too
    with pytest.raises(BertkitError, match=r"not empty and has no scale\.json"):
        Workspace(tmp_path / "old", SCALES["test"], progress=False)
    assert [p.name for p in (tmp_path / "old" / "test").iterdir()] == ["tokenizer"]  # nothing written


def test_entry_point_lists_the_claims_and_finds_its_paths_from_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from experiments import REPO
    from experiments.__main__ import build_parser, main
    from experiments.workspace import default_data_dir

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert all(f"  {name} " in shown for name in EXPERIMENTS) and "probe" in shown
    # Another working directory changes nothing: workspace, reports and data are found from the checkout.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTKIT_DATA", raising=False)
    args = build_parser().parse_args(["nsp"])
    assert Path(args.work) == REPO / "runs" / "experiments"
    assert (REPO / "docs" / "experiments" / "README.md").is_file() and (REPO / "experiments" / "claims.py").is_file()
    assert default_data_dir() in (REPO.parent / "shared" / "data", None)
    # A user's mistake is one line and exit status 2, before anything is written.
    assert main(["nsp", "--seeds", "0", "--work", str(tmp_path / "ws")]) == 2
    assert capsys.readouterr().err == "python -m experiments: error: --seeds 0: give at least 1\n"
    assert not (tmp_path / "ws").exists()


def test_index_names_tasks_and_compares_the_classical_baseline_with_every_encoder(tmp_path: Path) -> None:
    def report(name: str, raw: dict) -> None:
        (tmp_path / f"{name}.md").write_text(f"# Claim {name}\n\n- a: **held** (1 vs 0)\n- setup line\n")
        (tmp_path / f"{name}.json").write_text(json.dumps(raw))

    ngram = "n-gram features + LR"
    report(
        "pretraining",
        {
            "cls": {"pretrained": [0.70, 0.72], "random": [0.60, 0.62], ngram: 0.80, "majority": 0.5},
            "ner": {"pretrained": [0.40, 0.42], "random": [0.20, 0.22], ngram: 0.45, "majority": 0.0},
        },
    )
    # A claim on one task keeps its arms at the top level; a probe is an encoder too.
    report("masking", {"80/10/10": {"finetune": [0.50, 0.52], "probe": [0.01, 0.02]}, ngram: 0.45, "majority": 0.0})
    index = write_index(tmp_path, list(EXPERIMENTS)).read_text(encoding="utf-8")
    assert "review sentiment (cls): 'n-gram features + LR' beats every encoder" in index and "0.710" in index
    assert "People's Daily NER (ner): 'n-gram features + LR' does not beat every encoder" in index and "0.510" in index
    assert "**Probe**" in index and "## word2vec: not run yet" in index
    assert "Tasks and metrics (dev set): People's Daily NER (ner) by entity F1. Setup: what a chosen token" in index
    assert "- a: **held** (1 vs 0)" in index and "- setup line" not in index  # verdicts only
