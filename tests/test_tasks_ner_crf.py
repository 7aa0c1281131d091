"""NER with a CRF (`--crf`): the loss is the CRF's over each word's first sub-token, decoding gives only valid tag
sequences, entity scores are the CRF's marginal probabilities (checked against enumeration), the CRF learns at its
own learning rate, gold tags that no CRF can produce are read as the entity metric reads them, and the directory
still loads in transformers' token classifier with the same logits (crf.* reported unused). The algorithms
themselves (forward algorithm, Viterbi) are checked against brute force in test_crf.py."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bertkit import BertkitError
from bertkit.crf import CRF, allowed_transitions
from bertkit.data.task_files import TaggedSentence
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.tasks.model_dir import TASK_FILE, open_task_model
from bertkit.tasks.ner import NerTask, _chain_tags, _decode
from bertkit.tasks.settings import TaskSettings
from bertkit.train.optim import build_optimizer


@pytest.fixture(scope="module")
def cluener(tmp_path_factory, data_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crf_data")
    out = {}
    for split, n in (("train", 160), ("dev", 40)):
        sents = (data_dir / f"cluener2020/{split}.txt").read_text(encoding="utf-8").split("\n\n")[:n]
        out[split] = root / f"{split}.conll"  # predict reads a .conll file as CoNLL (a .txt as text lines)
        out[split].write_text("\n\n".join(sents) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def crf_model(tmp_path_factory, tiny_zh_pretrained: Path, cluener: dict[str, Path]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("crf_run") / "model"
    train = finetune_training(max_steps=8, eval_every=4, batch_size=16, learning_rate=1e-3, progress=False)
    cfg = FinetuneConfig(task="ner", model=str(tiny_zh_pretrained), train_file=str(cluener["train"]),
                         dev_file=str(cluener["dev"]), out=str(out), train=train,
                         settings=TaskSettings(max_seq_length=64, crf=True))  # fmt: skip
    return out, run_finetune(cfg)


def is_valid(path: list[int], masks: tuple[torch.Tensor, ...]) -> bool:
    start, trans, end = masks
    return bool(start[path[0]] and end[path[-1]] and all(trans[a, b] for a, b in itertools.pairwise(path)))


def test_crf_model_directory_holds_the_crf_and_says_so(crf_model: tuple[Path, dict]) -> None:
    out, result = crf_model
    assert result["dev"]["f1"] >= 0 and result["settings"]["crf"] is True
    assert json.loads((out / "config.json").read_text())["crf"] is True
    assert json.loads((out / TASK_FILE).read_text())["settings"]["crf"] is True
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"crf.start_transitions", "crf.end_transitions", "crf.transitions"} <= names
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("crf.transitions").abs().max() > 0  # trained, not left at its zero start


def test_predictions_are_valid_tag_sequences_with_crf_probabilities(
    crf_model: tuple[Path, dict], cluener: dict[str, Path], bertkit
) -> None:
    out, result = crf_model
    opened = open_task_model(out, "cpu")
    model = opened.model
    assert model.crf is not None
    labels = [opened.id2label[i] for i in range(len(opened.id2label))]
    masks = allowed_transitions(labels)
    r = bertkit("predict", "--model", out, "--input", cluener["dev"], "--device", "cpu")
    assert r.status == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert len(rows) == 40
    for row in rows:
        assert is_valid([labels.index(t) for t in row["tags"]], masks)
        assert all(0 < e["score"] <= 1 + 1e-6 for e in row["entities"])
    r = bertkit("evaluate", "--model", out, "--data", cluener["dev"], "--device", "cpu")
    assert r.status == 0, r.err
    # The saved model is the best dev one: evaluating it gives its dev F1 again (same batches, same decoding).
    assert json.loads(r.out.splitlines()[-1])["f1"] == pytest.approx(result["dev"]["f1"], abs=1e-9)


def test_viterbi_repairs_emissions_whose_argmax_is_invalid(crf_model: tuple[Path, dict], tmp_path: Path) -> None:
    # A copy whose classifier prefers I-name everywhere: one softmax per token would tag every character I-name,
    # which continues no entity at the start; the CRF may not, so it must open the entity with B-name.
    import shutil

    from bertkit.model import BertForTokenClassification

    copy = tmp_path / "forced"
    shutil.copytree(crf_model[0], copy)
    model = BertForTokenClassification.from_pretrained(copy)
    label2id = {v: int(k) for k, v in model.config.extra["id2label"].items()}
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label2id["I-name"]), model.num_labels) * 5)
        model.crf.transitions.zero_()
    model.save_pretrained(copy)
    opened = open_task_model(copy, "cpu")
    (row,) = opened.predict([opened.task.from_json({"text": "彭小军认为"})])
    assert row["tags"] == ["B-name", "I-name", "I-name", "I-name", "I-name"]
    assert [(e["type"], e["start"], e["end"]) for e in row["entities"]] == [("name", 0, 5)]


def test_the_loss_is_the_crfs_over_first_sub_tokens(crf_model: tuple[Path, dict], cluener: dict[str, Path]) -> None:
    opened = open_task_model(crf_model[0], "cpu")
    model, tok, task = opened.model.eval(), opened.tokenizer, opened.task
    label2id = {v: k for k, v in opened.id2label.items()}
    features = task.features(task.read(cluener["dev"])[:6], tok, label2id, train=True)
    from bertkit.tasks.base import pad_batch

    batch = pad_batch(features, tok.pad_id)
    with torch.no_grad():
        out = model(**batch)
        want = model.crf(out.logits, batch["labels"], batch["labels"] != -100)
    assert torch.allclose(out.loss, want) and out.loss.item() > 0


def test_entity_scores_are_crf_marginals_checked_by_enumeration() -> None:
    # A 3-tag CRF with random scores; the probability of each decoded tag is its marginal: the share of exp(score)
    # of all allowed paths through that tag at that position.
    labels = ["O", "B-X", "I-X"]
    crf = CRF(3, allowed_transitions(labels))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (crf.start_transitions, crf.transitions, crf.end_transitions):
            p.copy_(torch.randn(p.shape, generator=g))
    logits = [torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)]
    features = [{"first_pos": [1, 2, 4, 5]}, {"first_pos": [1, 3]}]
    start, trans, end = allowed_transitions(labels)
    decoded = _decode(crf, features, logits)
    torch.set_grad_enabled(False)
    for f, lg, (path, probs) in zip(features, logits, decoded, strict=True):
        em = lg[f["first_pos"]].double()
        n = len(f["first_pos"])
        scores = {}
        for y in itertools.product(range(3), repeat=n):  # under no_grad below: plain numbers
            if not is_valid(list(y), (start, trans, end)):
                continue
            s = crf.start_transitions[y[0]] + crf.end_transitions[y[-1]] + sum(em[i, y[i]] for i in range(n))
            s = s + sum(crf.transitions[a, b] for a, b in itertools.pairwise(y))
            scores[y] = float(s)
        z = torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.float64), 0)
        best = max(scores, key=scores.get)
        assert path == list(best)
        for i in range(n):
            marginal = sum(torch.exp(torch.tensor(s) - z) for y, s in scores.items() if y[i] == path[i])
            assert probs[i] == pytest.approx(float(marginal), abs=1e-5)  # float32 forward algorithm vs float64
    torch.set_grad_enabled(True)


def test_the_crf_learns_at_a_hundred_times_the_learning_rate(tiny_zh_pretrained: Path) -> None:
    from bertkit import BertConfig
    from bertkit.model import BertForTokenClassification

    config = BertConfig.load(tiny_zh_pretrained)
    config.extra.update(id2label={"0": "O", "1": "B-X", "2": "I-X"}, crf=True)
    model = BertForTokenClassification(config, 3)
    groups = build_optimizer(model, lr=1e-3).param_groups
    crf_ids = {id(p) for p in model.crf.parameters()}
    crf_groups = [g for g in groups if {id(p) for p in g["params"]} & crf_ids]
    assert sum(len(g["params"]) for g in crf_groups) == 3
    assert all(g["lr"] == pytest.approx(1e-3 * CRF.lr_scale) and len(g["params"]) for g in crf_groups)
    others = [p for g in groups if g not in crf_groups for p in g["params"]]
    assert all(g["lr"] == 1e-3 for g in groups if g not in crf_groups)
    assert len(others) == len(list(model.parameters())) - 3


def test_gold_tags_no_crf_can_produce_are_read_as_the_metric_reads_them() -> None:
    label2id = {t: i for i, t in enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])}
    ex = TaggedSentence(list("abcdef"), None, 7)
    # I-PER after O opens an entity (B-PER); I-LOC right after I-PER opens another (B-LOC)
    whole = (False, False)  # a whole sentence: cut at neither end
    got = _chain_tags(["O", "I-PER", "I-PER", "I-LOC", "O", "B-LOC"], False, label2id, ex, whole)
    assert got == ["O", "B-PER", "I-PER", "B-LOC", "O", "B-LOC"]
    assert _chain_tags(["I-PER", "O"], False, label2id, ex, (True, False)) == ["B-PER", "O"]  # a second chunk's
    bioes = {t: i for i, t in enumerate(["O", "B-PER", "I-PER", "E-PER"])}  # no S-PER in the data
    with pytest.raises(BertkitError, match=r"line 7: .*'S-PER'"):
        _chain_tags(["O", "B-PER", "O"], True, bioes, ex, whole)
    with pytest.raises(BertkitError, match=r"^train\.txt:7: .*'S-PER'"):  # read from a file: the error names it
        _chain_tags(["O", "B-PER", "O"], True, bioes, TaggedSentence(list("abc"), None, 7, "train.txt"), whole)
    # ... unless the entity is the piece of one cut at a chunk's end: it is O in that chunk
    assert _chain_tags(["O", "O", "B-PER"], True, bioes, ex, (False, True)) == ["O", "O", "O"]
    with pytest.raises(BertkitError, match=r"line 7: .*'S-PER'"):  # a lone B- inside the chunk is still wrong
        _chain_tags(["B-PER", "O", "B-PER", "I-PER"], True, bioes, ex, (False, True))


def test_training_chunks_end_before_an_entity_they_would_cut(tiny_zh_pretrained: Path) -> None:
    # A valid BIOES sentence longer than a chunk, with an entity across the chunk's end, was refused with --crf:
    # its first piece (a lone B-) needed S-TITLE, which the data never used ("correct the tags"). Training chunks
    # now end before that entity; evaluation chunks (which may not depend on the gold tags) tag the piece O.
    from bertkit import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_zh_pretrained)
    label2id = {t: i for i, t in enumerate(["O", "B-TITLE", "I-TITLE", "E-TITLE"])}
    tags = ["O"] * 13 + ["B-TITLE", "I-TITLE", "E-TITLE"] + ["O"] * 4  # 14 words fit a chunk of max length 16
    ex = TaggedSentence(list("我" * 20), tags, 3)
    task = NerTask(TaskSettings(max_seq_length=16, crf=True))
    train = task.features([ex], tok, label2id, train=True)
    assert [f["word_index"][0] for f in train] == [0, 13]  # the second chunk starts at the entity
    dev = task.features([ex], tok, label2id, train=False)
    assert [f["word_index"][0] for f in dev] == [0, 14]
    first = [t for t in dev[0]["token_labels"] if t != -100]
    assert first[-1] == label2id["O"]


def test_a_long_sentence_is_cut_into_chunks_whose_chains_are_valid(tiny_zh_pretrained: Path) -> None:
    from bertkit import Tokenizer

    tok = Tokenizer.from_pretrained(tiny_zh_pretrained)
    tags = ["B-PER"] + ["I-PER"] * 29
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2}
    task = NerTask(TaskSettings(max_seq_length=16, crf=True))
    features = task.features([TaggedSentence(list("张" * 30), tags, 1)], tok, label2id, train=True)
    assert len(features) >= 2
    for f in features:
        chain = [t for t in f["token_labels"] if t != -100]
        assert is_valid(chain, allowed_transitions(list(label2id)))
    assert next(t for t in features[1]["token_labels"] if t != -100) == label2id["B-PER"]


def test_crf_is_only_for_ner(tiny_zh_pretrained: Path, tmp_path: Path, data_dir: Path, bertkit) -> None:
    train = tmp_path / "t.tsv"
    rows = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()[:21]
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    r = bertkit("finetune", "--task", "cls", "--crf", "--model", tiny_zh_pretrained, "--train", train,
                "--out", tmp_path / "out", "--max-steps", "1")  # fmt: skip
    assert r.status == 2 and "--crf is for --task ner" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_crf_directory_loads_in_transformers_with_the_same_logits(
    crf_model: tuple[Path, dict], cluener: dict[str, Path]
) -> None:
    import transformers

    out, _ = crf_model
    ref, info = transformers.BertForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    assert sorted(info["unexpected_keys"]) == ["crf.end_transitions", "crf.start_transitions", "crf.transitions"]
    opened = open_task_model(out, "cpu")
    texts = ["".join(s.tokens) for s in opened.task.read(cluener["dev"])[:6]]
    batch = opened.tokenizer.batch(texts, max_length=64)
    with torch.no_grad():
        a, b = opened.model.eval()(**batch).logits, ref.eval()(**batch).logits
    real = batch["attention_mask"].bool()
    assert (a[real] - b[real]).abs().max() <= 1e-5  # fused QKV and unpadded rows vs transformers: rounding only


def test_evaluate_through_onnx_decodes_with_the_crf(
    crf_model: tuple[Path, dict], cluener: dict[str, Path], tmp_path: Path, bertkit
) -> None:
    from bertkit.export import export_onnx

    out, _ = crf_model
    onnx_file = tmp_path / "ner_crf.onnx"
    export_onnx(out, onnx_file, check=False)
    from bertkit.onnx_model import open_onnx_model_dir

    assert open_onnx_model_dir(out, onnx_file).task_model.model.crf is not None
    torch_metrics = bertkit("evaluate", "--model", out, "--data", cluener["dev"], "--device", "cpu")
    onnx_metrics = bertkit("evaluate", "--model", out, "--data", cluener["dev"], "--onnx", onnx_file)
    assert torch_metrics.status == onnx_metrics.status == 0, onnx_metrics.err
    want, got = (json.loads(r.out.splitlines()[-1]) for r in (torch_metrics, onnx_metrics))
    assert got["f1"] == pytest.approx(want["f1"], abs=1e-9)
