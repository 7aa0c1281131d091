"""Directories as transformers 5 saves them, read by bertkit with transformers as the oracle: a tokenizer saved as
tokenizer.json alone, default labels left out of config.json, a masked-LM decoder with weights of its own, a
classifier head whose labels come in another order than bertkit's, a model with fewer positions than its tokenizer
allows. Tiny random models, so every check runs in a second or two."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from bertkit import Tokenizer


def hf_model(
    out: Path, minilm_dir: Path, cls: str, *, vocab_txt: bool = False, max_positions: int = 128, **config
) -> Path:
    """A tiny random `cls` model and MiniLM's tokenizer, each saved by transformers' own save_pretrained."""
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    hf_config = transformers.BertConfig(vocab_size=30522, max_position_embeddings=max_positions, **sizes, **config)
    model = getattr(transformers, cls)(hf_config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(out)
    if vocab_txt:
        (out / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    return out


def test_a_tokenizer_saved_as_tokenizer_json_alone_is_read_with_its_settings(tmp_path: Path, minilm_dir: Path) -> None:
    # transformers 5 saves no vocab.txt: every bertkit command refused such a directory ("no vocab.txt").
    out = hf_model(tmp_path / "m", minilm_dir, "BertModel")
    assert not (out / "vocab.txt").exists()
    ours, theirs = Tokenizer.from_pretrained(out), transformers.AutoTokenizer.from_pretrained(out)
    text = "Café Müller said 今天天气很好 to ÅNGSTRÖM"
    assert ours.tokenize(text) == theirs.tokenize(text)
    # A cased tokenizer.json without tokenizer_config.json: its normalizer's settings, not bertkit's defaults.
    cased = tmp_path / "cased"
    cased.mkdir()
    doc = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    doc["normalizer"]["lowercase"] = False
    (cased / "tokenizer.json").write_text(json.dumps(doc), encoding="utf-8")
    assert not Tokenizer.from_pretrained(cased).lowercase and Tokenizer.from_pretrained(out).lowercase
    assert Tokenizer.from_pretrained(cased).tokenize("Café") == ["[UNK]"]  # an uncased vocabulary has no "C"


def test_default_labels_left_out_of_config_are_transformers_names(tmp_path: Path, minilm_dir: Path, bertkit) -> None:
    # transformers leaves id2label out where the labels are its defaults: predict died with KeyError 0.
    out = hf_model(tmp_path / "m", minilm_dir, "BertForSequenceClassification")
    assert "id2label" not in json.loads((out / "config.json").read_text())
    (tmp_path / "in.txt").write_text("good movie\n", encoding="utf-8")
    r = bertkit("predict", "--model", out, "--input", tmp_path / "in.txt")
    assert r.status == 0, r.err
    answer = json.loads(r.out.strip().splitlines()[-1])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        want = model(**transformers.AutoTokenizer.from_pretrained(out)("good movie", return_tensors="pt")).logits
    probs = torch.softmax(want[0], -1).tolist()
    assert answer["probabilities"] == pytest.approx({"LABEL_0": probs[0], "LABEL_1": probs[1]}, abs=1e-5)


def test_an_untied_masked_lm_decoder_is_refused_not_ignored(tmp_path: Path, minilm_dir: Path, bertkit) -> None:
    # bertkit predicted from the word embeddings and dropped the trained decoder: other tokens, exit 0.
    out = hf_model(tmp_path / "m", minilm_dir, "BertForMaskedLM", tie_word_embeddings=False)
    r = bertkit("fill-mask", "--model", out, "the sea is [MASK].")
    assert r.status == 2 and "the masked-LM decoder (cls.predictions.decoder.weight) has weights of its own" in r.err
    tied = hf_model(tmp_path / "tied", minilm_dir, "BertForMaskedLM")
    assert bertkit("fill-mask", "--model", tied, "the sea is [MASK].").status == 0


def test_fine_tuning_a_classifier_keeps_each_label_with_its_row(tmp_path: Path, minilm_dir: Path, bertkit) -> None:
    # A head trained for ("positive", "negative") was loaded row for row under bertkit's sorted labels: after a step
    # at a learning rate of almost 0 every answer had changed to the other label.
    out = hf_model(tmp_path / "m", minilm_dir, "BertForSequenceClassification", id2label={0: "positive", 1: "negative"},
                   label2id={"positive": 0, "negative": 1})  # fmt: skip
    with torch.no_grad():
        state = transformers.AutoModelForSequenceClassification.from_pretrained(out)
        state.classifier.bias[:] = torch.tensor([3.0, -3.0])
        state.save_pretrained(out)
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\ngood\tpositive\nbad\tnegative\n", encoding="utf-8")
    (tmp_path / "in.txt").write_text("a film\n", encoding="utf-8")
    before = json.loads(bertkit("predict", "--model", out, "--input", tmp_path / "in.txt").out.splitlines()[-1])
    r = bertkit("finetune", "--task", "cls", "--model", out, "--train", train, "--out", tmp_path / "ft",
                "--max-steps", "1", "--learning-rate", "1e-12", "--batch-size", "2")  # fmt: skip
    assert r.status == 0, r.err
    assert "a new task head" not in r.out
    after = json.loads(
        bertkit("predict", "--model", tmp_path / "ft", "--input", tmp_path / "in.txt").out.splitlines()[-1]
    )
    assert before["label"] == after["label"] == "positive"
    assert after["probabilities"]["positive"] == pytest.approx(before["probabilities"]["positive"], abs=1e-4)
    # Other labels, as many: the head starts afresh, and says why.
    train.write_text("text\tlabel\ngood\tyes\nbad\tno\n", encoding="utf-8")
    r = bertkit("finetune", "--task", "cls", "--model", out, "--train", train, "--out", tmp_path / "ft2",
                "--max-steps", "1", "--learning-rate", "1e-12", "--batch-size", "2")  # fmt: skip
    assert r.status == 0, r.err
    assert (
        "classifier: a new task head for 2 labels, trained from scratch (the model's head was trained for the "
        "labels positive, negative, not these)" in r.out
    )
    fresh = json.loads(
        bertkit("predict", "--model", tmp_path / "ft2", "--input", tmp_path / "in.txt").out.splitlines()[-1]
    )
    assert max(fresh["probabilities"].values()) < 0.9  # not the trained head's 0.99+


def test_embed_cuts_at_the_models_positions_when_the_tokenizer_allows_more(
    tmp_path: Path, minilm_dir: Path, bertkit
) -> None:
    # The tokenizer's 512 was the default length: a model of 128 positions refused a whole file for one long line.
    out = hf_model(tmp_path / "m", minilm_dir, "BertModel", max_positions=128)
    (tmp_path / "in.txt").write_text("short\n" + "word " * 300 + "\n", encoding="utf-8")
    r = bertkit("embed", "--model", out, "--input", tmp_path / "in.txt", "--out", tmp_path / "e.npy")
    assert r.status == 0, r.err
    assert "1 of 2 texts" in r.err and "longer than 128 tokens" in r.err
    assert np.load(tmp_path / "e.npy").shape == (2, 32)


def test_a_hugging_face_pair_classifier_scores_pairs_when_told(tmp_path: Path, minilm_dir: Path, bertkit) -> None:
    # Its directory does not say whether it learnt from pairs: predict refused text_b, with no way to say so.
    from helpers import run_bertkit

    out = hf_model(tmp_path / "m", minilm_dir, "BertForSequenceClassification",
                   id2label={0: "different", 1: "paraphrase"}, label2id={"different": 0, "paraphrase": 1})  # fmt: skip
    pairs = [("A man is eating.", "Someone eats food."), ("今天天气很好。", "The weather is nice today.")]
    data = tmp_path / "pairs.tsv"
    data.write_text("text_a\ttext_b\n" + "".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    refused = bertkit("predict", "--model", out, "--input", data)
    assert refused.status == 2 and "a Hugging Face classifier trained on pairs: give it --task pair" in refused.err
    r = bertkit("predict", "--model", out, "--input", data, "--task", "pair")
    assert r.status == 0, r.err
    got = [json.loads(line)["probabilities"]["paraphrase"] for line in r.out.strip().splitlines()]
    tok, model = transformers.AutoTokenizer.from_pretrained(out), transformers.AutoModelForSequenceClassification
    with torch.no_grad():
        logits = model.from_pretrained(out).eval()(**tok([a for a, _ in pairs], [b for _, b in pairs], padding=True,
                                                         return_tensors="pt")).logits  # fmt: skip
    assert got == pytest.approx(torch.softmax(logits, -1)[:, 1].tolist(), abs=1e-5)
    # The server reads it as a pair model when told so, with either backend (the export records "cls").
    from bertkit.serve.server import open_service

    want = torch.softmax(logits, -1)[:, 1].tolist()
    inputs = [{"text_a": a, "text_b": b} for a, b in pairs]
    assert bertkit("export", "--model", out, "--out", tmp_path / "m.onnx").status == 0
    for backend in ("torch", "onnx"):
        service = open_service(out, "cpu", backend, tmp_path / "m.onnx" if backend == "onnx" else None, task="pair")
        try:
            answers = service.predict(inputs)
            assert service.info()["task"] == "pair"
        finally:
            service.close()
        # within 1e-4: onnxruntime's fp32 kernels sum in another order than PyTorch's
        assert [a["probabilities"]["paraphrase"] for a in answers] == pytest.approx(want, abs=1e-4), backend
    # Standard input's errors name standard input, not the temporary file it was read through.
    lines = "".join(f"{a}\t{b}\n" for a, b in pairs)
    r = run_bertkit("predict", "--model", out, "--input", "-", stdin=lines)
    assert r.status == 2 and "standard input:1: 1 tab(s)" in r.err
