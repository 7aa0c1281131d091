"""Model directories in the Hugging Face layout: `config.json` + `model.safetensors` with HF parameter names.

bertkit's modules use short names (`layers.0.attn.qkv`); this module is the one place that knows the HF names
(`encoder.layer.0.attention.self.query`), in both directions. Weights are never pickled: safetensors on write;
on read, safetensors or (for old HF directories) `pytorch_model.bin` through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.files import atomic_write, hash_file, make_model_directory, model_directory, read_json_object

log = logging.getLogger(__name__)

# ours -> HF, applied to the part of a name after an optional "bert." prefix.
_LAYER_RENAMES = [
    (r"layers\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"layers\.(\d+)\.ln1\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"layers\.(\d+)\.ffn\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"layers\.(\d+)\.ffn\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"layers\.(\d+)\.ln2\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"embeddings\.ln\.", r"embeddings.LayerNorm."),
    (r"mlm\.transform\.", r"cls.predictions.transform.dense."),
    (r"mlm\.ln\.", r"cls.predictions.transform.LayerNorm."),
    (r"mlm\.bias$", r"cls.predictions.bias"),
    (r"nsp\.", r"cls.seq_relationship."),
]
_QKV = re.compile(r"^(.*)layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_TIED = re.compile(r"(^|\.)mlm\.word_embeddings\.weight$")  # the decoder shares the word embeddings
# Parameters a checkpoint may lack and that we then initialise fresh (task or pre-training heads, pooler).
_HEADS = re.compile(r"^(mlm\.|nsp\.|classifier\.|qa_outputs\.|crf\.|(bert\.)?pooler\.)")

M = TypeVar("M", bound=nn.Module)


def hf_names(name: str) -> list[str]:
    """HF name(s) of one of our parameters: three for a fused QKV projection, none for a tied weight."""
    if _TIED.search(name):
        return []
    m = _QKV.match(name)
    if m:
        prefix, i, kind = m.groups()
        return [f"{prefix}encoder.layer.{i}.attention.self.{p}.{kind}" for p in ("query", "key", "value")]
    for pattern, repl in _LAYER_RENAMES:
        name, n = re.subn(pattern, repl, name)
        if n:
            break
    return [name]


def to_hf_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our state dict (`model`'s, or `state` when given, e.g. gathered from FSDP shards) under HF names (QKV split
    in three, tied decoder weight left out)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in (state if state is not None else model.state_dict()).items():
        names = hf_names(name)
        if not names:
            continue
        parts = tensor.chunk(len(names), dim=0) if len(names) > 1 else [tensor]
        for hf, part in zip(names, parts, strict=True):
            out[hf] = part.detach().clone().contiguous().cpu()
    return out


def _normalise_key(key: str) -> str:
    # TF-era checkpoints call LayerNorm parameters gamma/beta.
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over a model directory's weight files and vocabulary (vocab.txt, else tokenizer.json): what an export
    records, so that a file exported from other weights (another model, or this directory fine-tuned again since)
    is never run as this one."""
    path = Path(model_dir)
    digest = hashlib.sha256()
    vocabulary = [f for f in (path / "vocab.txt", path / "tokenizer.json") if f.is_file()][:1]
    for f in [*_weight_files(path), *vocabulary]:
        hash_file(digest, f)
    return digest.hexdigest()


def _weight_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise BertkitError(
                    f"{path / index}: not a valid weight index (expected JSON with a weight_map of tensor name -> "
                    f"file; {type(e).__name__}: {e}); copy the model again"
                ) from None
            return [path / f for f in files]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise BertkitError(f"{path}: no model.safetensors (or pytorch_model.bin): is this a model directory?")


# What a damaged, truncated or foreign weight file raises while it is read.
_READ_ERRORS = (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError)


def _corrupt(f: Path, e: BaseException) -> BertkitError:
    if not os.access(f, os.R_OK):  # safetensors words a refused read as a missing file
        return BertkitError(f"{f}: cannot read weights: permission denied; check the file's permissions")
    return BertkitError(
        f"{f}: cannot read weights: the file is corrupt or truncated ({e}); copy it again from where it came from"
    )


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or infinity. A finite sum proves it (one NaN or infinity makes the sum NaN or
    infinite) in one pass that allocates nothing, where `isfinite` writes a mask as large as the tensor; only a
    sum that overflowed needs that check."""
    if not tensor.is_floating_point():
        return True
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding NaN or infinity, or None."""
    return next((name for name, tensor in tensors if not _all_finite(tensor)), None)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory, keyed by (normalised) HF name.

    Weights holding NaN or infinity are refused, naming the file and the first such tensor: a model that a
    diverged run left behind would otherwise load silently and answer with NaN."""
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(path)):
        try:
            if f.suffix == ".safetensors":
                part = load_file(str(f))
            else:
                part = torch.load(f, map_location="cpu", weights_only=True)
        except _READ_ERRORS as e:
            raise _corrupt(f, e) from None
        if not isinstance(part, dict):
            raise BertkitError(f"{f}: holds a {type(part).__name__}, not a dictionary of named tensors")
        name = first_non_finite((k, t) for k, t in part.items() if isinstance(t, torch.Tensor))
        if name is not None:
            raise BertkitError(
                f"{f}: tensor {name} holds NaN or infinite values, so the model would answer NaN (a training run "
                "that diverged?); use an earlier checkpoint, or train again with a lower learning rate"
            )
        tensors.update({_normalise_key(k): v for k, v in part.items()})
    return tensors


def tensor_names(path: str | Path) -> set[str]:
    """The (normalised) HF names of a model directory's tensors; safetensors files are not loaded to list them."""
    names: set[str] = set()
    for f in _weight_files(Path(path)):
        if f.suffix != ".safetensors":
            return set(read_tensors(path))
        try:
            with safe_open(str(f), framework="pt") as st:
                names.update(_normalise_key(k) for k in st.keys())  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError) as e:
            raise _corrupt(f, e) from None
    return names


def has_mlm_head(model: str | Path | set[str]) -> bool:
    """Whether a model directory (or its `tensor_names`) holds a masked-LM head (bertkit pretrain, HF
    BertForPreTraining / BertForMaskedLM)."""
    names = model if isinstance(model, set) else tensor_names(model)
    return any(n.startswith("cls.predictions.") for n in names)


def _align_prefix(tensors: dict[str, torch.Tensor], wants_prefix: bool) -> dict[str, torch.Tensor]:
    """A bare BertModel checkpoint has no "bert." prefix; a BertFor* one has it. Accept either for either."""
    has_prefix = any(k.startswith("bert.") for k in tensors)
    if wants_prefix and not has_prefix:
        return {(k if k.startswith("cls.") else "bert." + k): v for k, v in tensors.items()}
    if not wants_prefix and has_prefix:
        return {k.removeprefix("bert."): v for k, v in tensors.items() if k.startswith("bert.")}
    return tensors


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Copy HF-named tensors into `model`; returns the names of head parameters that were initialised fresh.

    A missing encoder tensor or any shape mismatch is an error that names the tensor and both shapes.
    """
    wants_prefix = any(n.startswith("bert.") for n, _ in model.named_parameters())
    names_in_weights = set(tensors)
    tensors = _align_prefix(tensors, wants_prefix)
    if "cls.predictions.bias" not in tensors and "cls.predictions.decoder.bias" in tensors:
        tensors["cls.predictions.bias"] = tensors["cls.predictions.decoder.bias"]
    fresh: list[str] = []
    state = model.state_dict()
    _check_decoder_tied(state, tensors, source)
    new_state: dict[str, torch.Tensor] = {}
    expected = {n for name in state for n in hf_names(name)}
    for name, current in state.items():
        names = hf_names(name)
        if not names:
            continue
        missing = [n for n in names if n not in tensors]
        damaged = _damaged_name(missing[0], names_in_weights, expected) if missing else None
        if damaged:
            raise BertkitError(
                f"{source} is corrupt: it holds no tensor {missing[0]} but one named {damaged!r}, a damaged copy of "
                "that name (a changed byte in the file's header); copy the model again from where it came from"
            )
        if missing:
            if _HEADS.match(name):
                fresh.append(name)
                continue
            raise BertkitError(
                f"{source}: tensor {missing[0]} is missing (the model expects shape {_shape(current, names)}); "
                "the weights do not belong to a BERT model of this config"
            )
        parts = [tensors[n] for n in names]
        stored = next((p for p in parts if p.is_floating_point() != current.is_floating_point()), None)
        if stored is not None:  # e.g. F32 changed to I32 in the header: the bytes would load as other numbers
            raise BertkitError(
                f"{source} is corrupt: tensor {names[0]} is stored as {stored.dtype}, but the model holds it as "
                f"{current.dtype}; copy the model again from where it came from"
            )
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if value.shape != current.shape and _HEADS.match(name):
            fresh.append(name)  # e.g. a classifier for another label set: a new head, not an error
            continue
        if value.shape != current.shape:
            raise BertkitError(
                f"{source}: tensor {names[0]} has shape {tuple(parts[0].shape)} in the weights but the config "
                f"gives {_shape(current, names)}; config.json and the weights do not match"
            )
        new_state[name] = value.to(current.dtype)
    if any(hasattr(t, "full_tensor") for t in state.values()):  # FSDP-sharded (DTensor) parameters
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, new_state, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        model.load_state_dict(new_state, strict=False)
    return fresh


def _check_decoder_tied(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a masked-LM decoder with weights of its own (transformers' `tie_word_embeddings: false`): bertkit's
    decoder is the word embedding matrix, and predicting from it would silently ignore the trained decoder."""
    decoder, embeddings = (
        tensors.get("cls.predictions.decoder.weight"),
        tensors.get("bert.embeddings.word_embeddings.weight"),
    )
    if not any(_TIED.search(n) for n in state) or decoder is None or embeddings is None:
        return
    if decoder.shape != embeddings.shape or not torch.equal(decoder, embeddings):
        raise BertkitError(
            f"{source}: the masked-LM decoder (cls.predictions.decoder.weight) has weights of its own, not the word "
            "embeddings' (tie_word_embeddings false); bertkit's masked-LM head shares them, so it cannot answer "
            "for this model's head (its encoder still embeds and fine-tunes)"
        )


def _damaged_name(wanted: str, names: set[str], expected: set[str]) -> str | None:
    """A name in the weights that no model part asks for and that differs from the missing `wanted` in one or two
    characters: what a flipped byte in a safetensors header (plain JSON) makes of a tensor name. Compared with and
    without the "bert." prefix, which the file may have or lack."""
    forms = {wanted, "bert." + wanted, wanted.removeprefix("bert.")}
    known = expected | {"bert." + n for n in expected} | {n.removeprefix("bert.") for n in expected}
    for name in sorted(names - known):
        for form in forms:
            if len(name) == len(form) and sum(a != b for a, b in zip(name, form, strict=True)) <= 2:
                return name
    return None


def _shape(current: torch.Tensor, names: list[str]) -> tuple[int, ...]:
    shape = list(current.shape)
    shape[0] //= len(names)
    return tuple(shape)


def load_model(cls: type[M], path: str | Path, config: BertConfig | None = None, **kwargs: Any) -> M:
    """Build `cls` from a model directory: its `config.json` (unless `config` is given) and its weights.

    Works on bertkit directories and on Hugging Face BERT directories (any BertModel/BertFor* checkpoint, old
    gamma/beta names included). Heads absent from the checkpoint are freshly initialised and listed in the
    model's `fresh_parameters`.
    """
    path = model_directory(path)
    config = config or BertConfig.load(path)
    model = cls(config, **kwargs)
    files = _weight_files(path)
    fresh = load_state(model, read_tensors(path), source=str(files[0] if len(files) == 1 else path))
    # Which heads are new is the caller's to judge: fine-tuning expects a new task head and says so plainly,
    # prediction must refuse a task model whose head is missing, an encoder does not care about its pooler.
    model.fresh_parameters = sorted(fresh)
    if fresh:
        log.debug("%s: initialised fresh (not in the checkpoint): %s", path, ", ".join(sorted(fresh)))
    model.eval()
    return model


PRETRAINING_RECORD = "bertkit_pretraining.json"  # beside a model that `bertkit pretrain` saved


def write_pretraining_record(model_dir: str | Path, record: dict) -> None:
    """Write what a pre-training run records beside its model (read back by `read_pretraining_record`)."""
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(Path(model_dir) / PRETRAINING_RECORD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_pretraining_record(model_dir: str | Path | None) -> dict:
    """What a bertkit pre-training recorded beside its model (objective, loss weights, dropout, longest sequence,
    ...); {} for a model it did not pre-train, such as a Hugging Face checkpoint."""
    path = Path(model_dir) / PRETRAINING_RECORD if model_dir is not None else None
    if path is None or not path.is_file():
        return {}
    return read_json_object(path, "restore it from a copy of the model")


def save_model(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write a Hugging Face model directory: `config.json` (with `architectures`) and `model.safetensors`, from
    `model`'s weights or from `state` (its full state dict, e.g. gathered from FSDP shards). Weights holding NaN or
    infinity are refused before anything is written."""
    path = Path(path)
    tensors = to_hf_state_dict(model, state)
    # The last line of defence against keeping a diverged model (the trainer checks its loss first).
    name = first_non_finite(tensors.items())
    if name is not None:
        raise BertkitError(
            f"refusing to save a model with NaN or infinite weights (tensor {name}) to {path}: training diverged; "
            "lower the learning rate, or resume from an earlier checkpoint"
        )
    path = make_model_directory(path)
    atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config: BertConfig = model.config  # type: ignore[assignment]
    config.save(path / "config.json", type(model).hf_architecture)  # type: ignore[attr-defined]
