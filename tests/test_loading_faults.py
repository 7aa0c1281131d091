"""Damaged model directories and full disks: one clear line and exit 2, never a traceback, a NaN answer or a lost file.

Each test copies a small model directory (a tiny random BERT with its MLM head, and a sequence classifier) and
damages one file in the copy: config.json with a wrong type or invalid JSON, weights holding NaN, a flipped byte in
the safetensors header, a truncated weight file. `embed`, `fill-mask` and `predict` must each name that file.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import BertConfig, BertForPreTraining, BertkitError, BertModel, Tokenizer
from bertkit.checkpoint import save_model
from bertkit.files import atomic_write
from bertkit.model import BertForSequenceClassification

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds sing in the morning", "the sun is warm today"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny pre-trained-style model (MLM head) and a sequence classifier, each with its tokenizer. Built from the
    four English sentences above rather than shared with `tiny_zh_pretrained`, so these tests need no shared data,
    and its 120-piece vocabulary keeps each test's copy small."""
    root = tmp_path_factory.mktemp("loading_faults")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 5) + "\n", encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=120, show_progress=False)
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=64)
    BertForPreTraining(config).save_pretrained(root / "pretrained")
    tok.save_pretrained(root / "pretrained")
    config.extra = {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
    BertForSequenceClassification(config, num_labels=2).save_pretrained(root / "cls")
    tok.save_pretrained(root / "cls")
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return {"pretrained": root / "pretrained", "cls": root / "cls", "texts": root / "texts.txt"}


def set_config_field(key: str, value) -> Callable[[Path], Path]:
    def damage(model: Path) -> Path:
        d = json.loads((model / "config.json").read_text())
        d[key] = value
        (model / "config.json").write_text(json.dumps(d))
        return model / "config.json"

    return damage


def list_config(model: Path) -> Path:
    (model / "config.json").write_text("[]")
    return model / "config.json"


def invalid_json_config(model: Path) -> Path:
    (model / "config.json").write_text('{"hidden_size": 128,')
    return model / "config.json"


def nan_weights(model: Path) -> Path:
    tensors = load_file(str(model / "model.safetensors"))
    tensors["bert.encoder.layer.1.output.dense.weight"][3, 5] = float("nan")
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model / "model.safetensors"


def flip_byte_in_name(model: Path, name: str = "bert.encoder.layer.0.attention.self.query.weight") -> Path:
    """XOR one byte of a tensor name inside the safetensors header (the header is JSON after an 8-byte length)."""
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    at = data.index(f'"{name}"'.encode(), 8, 8 + header_len) + 1 + name.index("query")  # the "q" of query
    data[at] ^= 0x01  # "q" -> "p"
    path.write_bytes(bytes(data))
    return path


def truncated_weights(model: Path) -> Path:
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


DAMAGES = {
    "hidden_size_string": (set_config_field("hidden_size", "128"), ['hidden_size is "128" (a string)', "integer"]),
    "heads_zero": (set_config_field("num_attention_heads", 0), ["num_attention_heads is 0", "positive integer"]),
    "config_is_a_list": (list_config, ["JSON object"]),
    "config_invalid_json": (invalid_json_config, ["not valid JSON"]),
    "nan_weights": (nan_weights, ["bert.encoder.layer.1.output.dense.weight", "NaN"]),
    "flipped_header_byte": (flip_byte_in_name, ["corrupt", "attention.self.puery.weight"]),
    "truncated_weights": (truncated_weights, ["corrupt or truncated"]),
}


PROGRESS_BAR = re.compile(r"^\w+:\s+\d+%\|")  # tqdm's lines on stderr (embed shows one before it writes)


def assert_one_line_error(code: int, err: str, command: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
    assert code == 2, err
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith(f"bertkit {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("command", ["embed", "fill-mask", "predict"])
def test_damaged_model_file_is_one_line_naming_it(
    command: str, damage: str, models: dict[str, Path], tmp_path: Path, bertkit
) -> None:
    model = tmp_path / "model"
    shutil.copytree(models["cls" if command == "predict" else "pretrained"], model)
    damage_fn, fragments = DAMAGES[damage]
    damaged_file = damage_fn(model)
    out = tmp_path / "emb.npy"
    argv = {
        "embed": ["embed", "--model", str(model), "--input", str(models["texts"]), "--out", str(out)],
        "fill-mask": ["fill-mask", "--model", str(model), "the [MASK] sat on the mat"],
        "predict": ["predict", "--model", str(model), "--input", str(models["texts"])],
    }[command]
    code, stdout, err = bertkit(*argv, *(["--device", "cpu"]))
    assert_one_line_error(code, err, command, str(damaged_file), *fragments)
    assert "NaN" not in stdout and not out.exists()


@pytest.mark.parametrize(
    ("text", "said"),
    [("{not json", "not valid JSON"), ('{"pooling_mode_cls_token": 1}', "pooling_mode_cls_token is 1: expected true")],
)
def test_embed_with_broken_pooling_settings(models, tmp_path: Path, bertkit, text: str, said: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(models["pretrained"], model)
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling/config.json").write_text(text)
    out = tmp_path / "emb.npy"
    code, _, err = bertkit("embed", "--model", str(model), "--input", str(models["texts"]), "--out", str(out))
    assert_one_line_error(code, err, "embed", str(model / "1_Pooling/config.json"), said)
    assert not out.exists()


@pytest.mark.parametrize("text", ["{", "[1, 2]"])
def test_broken_pretraining_record_is_one_line(tmp_path: Path, text: str) -> None:
    from bertkit.checkpoint import PRETRAINING_RECORD, read_pretraining_record

    (tmp_path / PRETRAINING_RECORD).write_text(text)
    with pytest.raises(BertkitError, match=f"^{re.escape(str(tmp_path / PRETRAINING_RECORD))}: "):
        read_pretraining_record(tmp_path)


def test_the_undamaged_copies_work(models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    """The damage above is what fails: the same commands on the intact directories succeed."""
    out = tmp_path / "emb.npy"
    argv = ["--model", str(models["pretrained"]), "--input", str(models["texts"]), "--out", str(out), "--device", "cpu"]
    assert bertkit("embed", *argv).status == 0 and np.isfinite(np.load(out)).all()
    assert bertkit("fill-mask", "--model", str(models["pretrained"]), "the [MASK] sat", "--device", "cpu").status == 0
    code, stdout, _ = bertkit("predict", "--model", str(models["cls"]), "--input", str(models["texts"]))
    assert code == 0 and len(stdout.splitlines()) == len(TEXTS)


def test_any_flipped_bit_in_the_header_is_refused_as_corrupt_or_is_harmless(models: dict[str, Path], tmp_path) -> None:
    """Flip random bits of the safetensors header (fixed seed): either the file is refused as corrupt, naming it,
    or the flip hit something unused (JSON padding, the format note) and the model computes exactly what the
    intact one does (same weights, same inputs, same process: equality is exact). Never "missing tensor"."""
    source = models["pretrained"]
    original = (source / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", original[:8])
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    expected = BertForPreTraining.from_pretrained(source)(input_ids=ids).mlm_logits
    model = tmp_path / "model"
    shutil.copytree(source, model)
    rng = random.Random(18)
    outcomes = {"refused": 0, "harmless": 0}
    for _ in range(80):
        at, bit = rng.randrange(8 + header_len), rng.randrange(8)
        data = bytearray(original)
        data[at] ^= 1 << bit
        (model / "model.safetensors").write_bytes(bytes(data))
        try:
            loaded = BertForPreTraining.from_pretrained(model)
        except BertkitError as e:
            assert "corrupt" in str(e) and "model.safetensors" in str(e), f"byte {at} bit {bit}: {e}"
            outcomes["refused"] += 1
            continue
        assert torch.equal(loaded(input_ids=ids).mlm_logits, expected), f"byte {at} bit {bit} changed the model"
        outcomes["harmless"] += 1
    assert outcomes["refused"] > 40, outcomes  # most of the header is names, shapes and offsets


def test_a_changed_dtype_in_the_header_is_corrupt(models: dict[str, Path], tmp_path: Path) -> None:
    """F32 -> I32 keeps every size and offset valid, so safetensors reads it: the weights would load as integers."""
    shutil.copytree(models["pretrained"], tmp_path / "m")
    path = tmp_path / "m/model.safetensors"
    data = bytearray(path.read_bytes())
    at = data.index(b'"F32"')
    data[at + 1 : at + 2] = b"I"
    path.write_bytes(bytes(data))
    with pytest.raises(BertkitError, match=r"corrupt: tensor \S+ is stored as torch.int32"):
        BertForPreTraining.from_pretrained(tmp_path / "m")


def test_a_damaged_bert_prefix_is_corrupt_not_missing(models: dict[str, Path], tmp_path: Path) -> None:
    """A bare BertModel drops the head tensors and the "bert." prefix: a flip in that prefix is still found."""
    shutil.copytree(models["pretrained"], tmp_path / "m")
    path = tmp_path / "m/model.safetensors"
    name = b'"bert.embeddings.word_embeddings.weight"'
    data = bytearray(path.read_bytes())
    data[data.index(name) + 4] ^= 0x04  # "bert." -> "berp."
    path.write_bytes(bytes(data))
    with pytest.raises(BertkitError, match=r"model\.safetensors is corrupt: .*'berp\.embeddings"):
        BertModel.from_pretrained(tmp_path / "m")


def test_first_non_finite_tensor_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(models["pretrained"], tmp_path / "m")
    path = tmp_path / "m/model.safetensors"
    tensors = load_file(str(path))
    first = sorted(tensors)[3]  # safetensors stores tensors by name
    tensors[first].view(-1)[0] = float("inf")
    tensors[sorted(tensors)[-1]].view(-1)[0] = float("nan")
    save_file(tensors, str(path))
    with pytest.raises(BertkitError) as e:
        BertModel.from_pretrained(tmp_path / "m")
    assert f"tensor {first} holds NaN or infinite values" in str(e.value) and str(path) in str(e.value)


def test_saving_non_finite_weights_is_refused_and_the_earlier_model_kept(models, tmp_path: Path) -> None:
    out = tmp_path / "m"
    shutil.copytree(models["pretrained"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    model = BertForPreTraining.from_pretrained(out)
    with torch.no_grad():
        model.bert.layers[0].ffn.fc2.weight[0, 0] = float("nan")
    with pytest.raises(BertkitError, match=r"refusing to save .*NaN.*encoder\.layer\.0\.output\.dense\.weight"):
        model.save_pretrained(out)
    with pytest.raises(BertkitError, match="refusing to save"):
        save_model(model, tmp_path / "new")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "new").exists()


def test_large_finite_weights_are_not_mistaken_for_non_finite(tmp_path: Path) -> None:
    """The check sums each tensor first; a sum that overflows to inf must fall back to the element-wise check."""
    model = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=16))  # fmt: skip
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.fill_(3e38)  # finite; their float32 sum is inf
    save_model(model, tmp_path)
    loaded = BertModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_embed_refuses_vectors_that_overflow(models: dict[str, Path]) -> None:
    """Finite weights can still overflow to inf and then NaN; embed must raise rather than return such vectors."""
    from bertkit.infer import embed

    model = BertModel.from_pretrained(models["pretrained"])
    tok = Tokenizer.from_pretrained(models["pretrained"])
    with torch.no_grad():
        model.layers[-1].ln2.weight.fill_(3e38)  # finite, but the float32 sum of H such terms is not
        model.layers[-1].ln2.bias.fill_(3e38)
    with pytest.raises(BertkitError, match="NaN or infinite values for text 1"):
        embed(model, tok, TEXTS)


# ------------------------------------------------------------------------------------------- atomic_write


def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    """Files get what a plain open() gives them: 0o666 less the umask for a new file, the old mode for a replaced
    one (mkstemp's 0o600 made models and .npy files unreadable to the other users a umask of 022 allows)."""
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda t: Path(t).write_text("a"))
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("plain")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "b.txt", lambda t: Path(t).write_text("b"))
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
        os.umask(0o022)
        (tmp_path / "private.txt").write_text("old")
        (tmp_path / "private.txt").chmod(0o600)
        atomic_write(tmp_path / "private.txt", lambda t: Path(t).write_text("new"))
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600  # as open("w") on an existing file
        model = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16))  # fmt: skip
        save_model(model, tmp_path / "model")
        assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()} == {
            "model.safetensors": 0o644,
            "config.json": 0o644,
        }
    finally:
        os.umask(previous)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors'
    ],
)
def test_disk_full_is_one_line_and_keeps_the_earlier_file(tmp_path: Path, failure: Exception) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("earlier")

    def write(tmp: str) -> None:
        Path(tmp).write_text("half of the new conte")
        raise failure

    with pytest.raises(BertkitError) as e:
        atomic_write(target, write)
    assert str(e.value).startswith(f"disk full at {target}:") and "\n" not in str(e.value)
    assert target.read_text() == "earlier" and leftovers(tmp_path) == []


def test_other_write_errors_pass_through_unchanged(tmp_path: Path) -> None:
    def write(tmp: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "x", write)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="/proc: a file system that shows no free space")
def test_a_folder_without_free_space_is_not_a_full_disk_when_the_system_said_why() -> None:
    # `embed --out /proc/x.npy` said "disk full ... free some space": /proc shows no free space, but the write had
    # failed for a missing file, and the system said so.
    from bertkit.files import is_disk_full

    assert not is_disk_full(FileNotFoundError(errno.ENOENT, "No such file or directory"), "/proc")
    assert is_disk_full(RuntimeError("a short write"), "/proc")  # no reason given: the free space decides


def test_embed_into_a_full_disk(small_disk, models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    """A real ENOSPC (numpy reports it as a short write without an errno): exit 2, one line "disk full at PATH",
    the earlier .npy intact, no temporary file left."""
    disk = small_disk("256k")
    out = disk / "emb.npy"
    few, many = tmp_path / "few.txt", tmp_path / "many.txt"
    few.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    many.write_text("\n".join(TEXTS * 200) + "\n", encoding="utf-8")  # 800 x 128 float32 = 400 KiB > 256 KiB
    common = ["--model", str(models["pretrained"]), "--out", str(out), "--device", "cpu"]
    assert bertkit("embed", "--input", str(few), *common).status == 0
    earlier = out.read_bytes()
    code, _, err = bertkit("embed", "--input", str(many), *common, "--overwrite")
    assert_one_line_error(code, err, "embed", f"disk full at {out}")
    assert out.read_bytes() == earlier and leftovers(disk) == []


def test_save_model_into_a_full_disk(small_disk, models: dict[str, Path]) -> None:
    """safetensors reports ENOSPC in its own exception type; the earlier model stays whole."""
    disk = small_disk("256k")
    small = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=16))  # fmt: skip
    save_model(small, disk / "model")
    earlier = {p.name: p.read_bytes() for p in (disk / "model").iterdir()}
    big = BertForPreTraining.from_pretrained(models["pretrained"])  # about 1 MB of weights
    with pytest.raises(BertkitError, match=rf"^disk full at {disk / 'model' / 'model.safetensors'}:"):
        save_model(big, disk / "model")
    assert {p.name: p.read_bytes() for p in (disk / "model").iterdir()} == earlier


def test_a_task_model_without_its_head_is_refused_not_answered_at_random(models, tmp_path: Path, bertkit) -> None:
    # A classifier directory whose weights lost the classifier (e.g. a pre-trained model's weights copied over
    # it): the loader initialises a new head at random, and predict answered with it, exit 0.
    model = tmp_path / "cls"
    shutil.copytree(models["cls"], model)
    tensors = load_file(str(model / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("classifier.")}, str(model / "model.safetensors"))
    code, out, err = bertkit("predict", "--model", str(model), "--input", str(models["texts"]))
    assert_one_line_error(code, err, "predict", str(model), "no trained task head", "classifier.")
    assert out == ""


@pytest.mark.parametrize("text", ["{", '{"task": "translation"}', '{"task": "cls", "settings": [1]}'])
def test_a_broken_task_record_is_one_line(models, tmp_path: Path, bertkit, text: str) -> None:
    model = tmp_path / "cls"
    shutil.copytree(models["cls"], model)
    (model / "bertkit_task.json").write_text(text)
    code, out, err = bertkit("predict", "--model", str(model), "--input", str(models["texts"]))
    assert_one_line_error(code, err, "predict", str(model / "bertkit_task.json"))
    assert out == ""


def test_a_partial_mlm_head_is_refused(models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    # Weights holding the masked-LM head's bias but not its transform: fill-mask answered from a randomly
    # initialised transform, exit 0.
    model = tmp_path / "model"
    shutil.copytree(models["pretrained"], model)
    weights = load_file(model / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("cls.predictions.transform")}
    assert len(kept) < len(weights) and any(k.startswith("cls.predictions.") for k in kept)
    save_file(kept, model / "model.safetensors", metadata={"format": "pt"})
    code, stdout, err = bertkit("fill-mask", "--model", str(model), "the [MASK] sat on the mat")
    assert_one_line_error(code, err, "fill-mask", str(model), "only part of the masked-LM head")
    assert stdout == ""
