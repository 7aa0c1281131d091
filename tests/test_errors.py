"""Bad input gives one clear line and a non-zero exit, never a traceback (in this process, a traceback would be an
exception out of the `bertkit` fixture, failing the test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertkit import BertConfig, BertForPreTraining, BertkitError, BertModel, Tokenizer


def test_non_utf8_corpus_names_file_and_byte(tmp_path: Path, bertkit) -> None:
    bad = tmp_path / "gbk.txt"
    good_prefix = "第一行是好的。\n".encode()
    bad.write_bytes(good_prefix + "第二行是GBK编码。\n".encode("gbk"))
    r = bertkit("vocab", "--corpus", bad, "--vocab-size", "100", "--out", tmp_path / "tok")
    assert r.status == 2
    assert "Traceback" not in r.err
    assert str(bad) in r.err and f"byte {len(good_prefix)}" in r.err and "line 2" in r.err
    assert not (tmp_path / "tok").exists()


def test_empty_corpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(BertkitError, match="no text"):
        Tokenizer.train([empty], vocab_size=100, show_progress=False)


def test_directory_without_vocab_or_config(tmp_path: Path, minilm_dir: Path, bertkit) -> None:
    with pytest.raises(BertkitError, match=r"no vocab\.txt"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(BertkitError, match=r"no config\.json"):
        BertModel.from_pretrained(tmp_path)
    r = bertkit("embed", "--model", tmp_path, "--input", "-", "--out", tmp_path / "x.npy")
    assert r.status == 2 and "Traceback" not in r.err and "error" in r.err


def test_weights_that_do_not_match_config(tmp_path: Path, minilm_dir: Path) -> None:
    shutil.copytree(minilm_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["intermediate_size"] = 1024
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(BertkitError) as e:
        BertModel.from_pretrained(tmp_path / "m")
    msg = str(e.value)
    assert "encoder.layer.0.intermediate.dense.weight" in msg and "(1536, 384)" in msg and "(1024, 384)" in msg


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    BertForPreTraining(BertConfig.preset("tiny", vocab_size=100)).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(BertkitError, match=r"bert\.encoder\.layer\.1\.attention\.self\.key\.weight is missing"):
        BertForPreTraining.from_pretrained(tmp_path)


def test_corrupt_weight_file(tmp_path: Path, bertkit) -> None:
    BertModel(BertConfig.preset("tiny", vocab_size=100)).save_pretrained(tmp_path)
    Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "好"]).save_pretrained(tmp_path)  # all else is sound
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    r = bertkit("embed", "--model", tmp_path, "--input", "-", "--out", tmp_path / "e.npy")
    assert r.status == 2 and "cannot read weights" in r.err and "Traceback" not in r.err
    assert f"{tmp_path / 'model.safetensors'}: cannot read weights: the file is corrupt" in r.err
    with pytest.raises(BertkitError, match="cannot read weights"):
        BertModel.from_pretrained(tmp_path)


def test_bad_preset_and_config() -> None:
    with pytest.raises(BertkitError, match="unknown model preset"):
        BertConfig.preset("huge")
    with pytest.raises(BertkitError, match="multiple"):
        BertConfig(hidden_size=100, num_attention_heads=3)
