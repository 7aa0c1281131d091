"""Inference pipelines over a model directory: sentence embeddings and fill-mask."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from bertkit.config import BertConfig
from bertkit.constants import INFERENCE_BATCH_SIZE, INFERENCE_CHUNK, POOLINGS, TOP_K
from bertkit.errors import BertkitError, NonFiniteOutputError, shown
from bertkit.files import model_directory, read_json_object
from bertkit.machine import release_free_memory
from bertkit.model import BertForPreTraining, BertModel
from bertkit.options import as_whole_number
from bertkit.progress import progress_bar
from bertkit.tokenizer import Encoding, Tokenizer, check_texts


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that the attention mask keeps: (B, T, H) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# sentence-transformers pooling modes, and which of them bertkit computes.
_POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": None,
    "pooling_mode_mean_sqrt_len_tokens": None,
    "pooling_mode_weightedmean_tokens": None,
    "pooling_mode_lasttoken": None,
}


def _read_json_object(path: Path) -> dict:
    return read_json_object(path, "restore the file or copy the model again", "a JSON object of settings")


def embedding_settings(path: str | Path) -> dict:
    """Pooling and length settings of a sentence-transformers directory, when it has them.

    A setting bertkit cannot follow (max or weighted pooling, several modes at once) or of the wrong type is an
    error naming the file: computing mean vectors instead would be silently wrong."""
    path = model_directory(path)  # the defaults would stand in for a directory that is not there
    settings: dict = {"pooling": "mean", "normalize": True, "max_length": None}
    st = path / "sentence_bert_config.json"
    if st.is_file():
        length = _read_json_object(st).get("max_seq_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length <= 0):
            raise BertkitError(f"{st}: max_seq_length is {json.dumps(length)}: expected a positive integer or null")
        settings["max_length"] = length
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = _read_json_object(pooling)
        for key in _POOLING_MODES:
            if key in modes and not isinstance(modes[key], bool):
                raise BertkitError(f"{pooling}: {key} is {json.dumps(modes[key])}: expected true or false")
        chosen = [key for key in _POOLING_MODES if modes.get(key)]
        if len(chosen) > 1 or (chosen and _POOLING_MODES[chosen[0]] is None):
            raise BertkitError(
                f"{pooling}: pooling {' + '.join(chosen)} is not supported; bertkit pools by "
                "pooling_mode_mean_tokens or pooling_mode_cls_token (one of them)"
            )
        if chosen:
            settings["pooling"] = _POOLING_MODES[chosen[0]]
    return settings


def embedding_length(tokenizer: Tokenizer, config: BertConfig, max_length: int | None = None) -> int:
    """The tokens a text is cut at for its embedding: `max_length` when given, else the tokenizer's; never more
    than the model's positions (a sentence-transformers config may name more)."""
    if max_length is None:
        max_length = tokenizer.model_max_length
    return min(max_length, config.max_position_embeddings)


@torch.inference_mode()
def embed(
    model: BertModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = INFERENCE_BATCH_SIZE,
    max_length: int | None = None,
    pooling: str = "mean",
    normalize: bool = True,
    device: torch.device | None = None,
    progress: bool = False,
    cut: list[int] | None = None,
) -> np.ndarray:
    """Sentence embeddings (N, H) as float32: mean (or [CLS]) pooling, L2-normalised by default.

    Texts are batched by length so that little work goes to padding; the output keeps the input order. A text is
    cut at `max_length` tokens, by default the fewer of the tokenizer's and the model's positions; when `cut` is a
    list, the positions of the texts cut are appended to it. They are encoded `INFERENCE_CHUNK` at a time, so that
    memory beyond the output does not grow with their number.
    """
    if pooling not in POOLINGS:
        raise BertkitError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    batch_size = as_whole_number(batch_size, "batch_size")
    check_texts(texts, "texts")
    device = device or next(model.parameters()).device
    model.eval()
    max_length = embedding_length(tokenizer, model.config, max_length)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with progress_bar(progress, total=len(texts), desc="embed", unit="text") as bar:
        for first in range(0, len(texts), INFERENCE_CHUNK):
            encodings = tokenizer.encode_batch(list(texts[first : first + INFERENCE_CHUNK]), max_length=max_length)
            if cut is not None:
                cut.extend(first + i for i, e in enumerate(encodings) if e.truncated)
            order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i]))  # longest first: see run_model
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in tokenizer.pad([encodings[i] for i in idx]).items()}
                # [CLS] pooling reads one token: the last layer computes its row alone (an ONNX graph, all rows).
                read = {"outputs_at": _cls_only(batch["input_ids"])} if pooling == "cls" else {}
                hidden = model(**batch, **read).last_hidden_state  # (B, T, H)
                vec = mean_pool(hidden, batch["attention_mask"]) if pooling == "mean" else hidden[:, 0]
                if normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=-1)
                out[[first + i for i in idx]] = vec.float().cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
            if len(texts) > INFERENCE_CHUNK:  # as TaskModel.predict_iter (a server's calls tidy on their own clock)
                release_free_memory()
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:  # finite weights can still overflow (e.g. in float16); a NaN vector must not reach a file
        raise NonFiniteOutputError(
            f"the model computed a vector with NaN or infinite values for text {bad[0] + 1} "
            f"({bad.size} of {len(out)} texts), so no vectors are returned; its weights overflow on this input"
        )
    return out


class MaskPastTheCutError(BertkitError):
    """A text whose [MASK] lies past the tokens the model reads: too long for fill-mask as it stands."""


def _cls_only(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True at each sequence's first token, [CLS]."""
    at = torch.zeros_like(input_ids, dtype=torch.bool)
    at[:, 0] = True
    return at


def mask_past_the_cut(tokenizer: Tokenizer, enc: Encoding) -> bool:
    """Whether `enc`, a text cut at the model's maximum length, lost a [MASK] that the text holds: an answer for
    the first [MASK]s alone would look complete."""
    return tokenizer.mask_id in enc.cut_ids


def mask_past_the_cut_message(enc: Encoding) -> str:
    """The one line that refuses such a text."""
    return (f"a [MASK] lies past the first {len(enc)} tokens, and this model reads at most {len(enc)}: send the "
            "sentence around each [MASK], not the whole text")  # fmt: skip


@torch.inference_mode()
def fill_mask(
    model: BertForPreTraining, tokenizer: Tokenizer, text: str, top_k: int = TOP_K
) -> list[list[tuple[str, float]]]:
    """For each `[MASK]` in `text`, the `top_k` most likely tokens with their probabilities (special tokens
    excluded), as the masked-LM head predicts them."""
    return _fill_mask_one(model, tokenizer, text, top_k)[1]


def fill_mask_answer(model: BertForPreTraining, tokenizer: Tokenizer, text: str, top_k: int = TOP_K) -> dict:
    """One text's fill-mask answer as the CLI prints it and the server sends it: {"text", "masks": one list of
    {"token", "score"} per [MASK], best first}, and "truncated": true for a text longer than the model reads (its
    [MASK]s all lie before the cut, or it is refused, but the context after the cut was not seen)."""
    return _answer(text, *_fill_mask_one(model, tokenizer, text, top_k))


@torch.inference_mode()
def fill_mask_answers(
    model: BertForPreTraining,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    top_k: int | list[int] | tuple[int, ...] = TOP_K,
    batch_size: int = INFERENCE_BATCH_SIZE,
    encodings: list[Encoding] | None = None,
) -> list[dict]:
    """`fill_mask_answer` for each of `texts` (`top_k` one number, or a list of one per text), `batch_size` texts
    of similar length per forward pass, whose encoder's last layer and decoder compute the [MASK] positions alone.
    A text that cannot be answered is refused before anything runs, the error naming it (texts[n]). `encodings`:
    the texts' `masked_encoding`s, where the caller has made them already (a server, checking requests as they
    come); they are not made again."""
    _check_fill_mask_model(model)
    check_texts(texts, "texts", each=False)
    batch_size = as_whole_number(batch_size, "batch_size")
    if isinstance(top_k, list | tuple):
        if len(top_k) != len(texts):
            raise BertkitError(f"top_k gives {len(top_k)} numbers for {len(texts)} texts: give one, or one per text")
        ks = [as_whole_number(k, f"top_k[{n}]") for n, k in enumerate(top_k)]
    else:
        ks = [as_whole_number(top_k, "top_k")] * len(texts)
    if encodings is not None and len(encodings) != len(texts):
        raise BertkitError(f"encodings gives {len(encodings)} for {len(texts)} texts: one per text, or none")
    if encodings is None:
        encodings = []
        for n, text in enumerate(texts):
            try:
                encodings.append(masked_encoding(tokenizer, text))
            except BertkitError as e:  # of its kind: a [MASK] past the cut is too much work for a server
                raise type(e)(f"texts[{n}]: {e}") from None
    answers: list[dict] = [{}] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(encodings[i]))  # longest first: little padding per batch
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        found = _candidates(model, tokenizer, [encodings[i] for i in idx], [ks[i] for i in idx],
                            lambda j, idx=idx: f"texts[{idx[j]}], {shown(texts[idx[j]])}")  # fmt: skip
        for i, candidates in zip(idx, found, strict=True):
            answers[i] = _answer(texts[i], encodings[i], candidates)
    return answers


def _fill_mask_one(
    model: BertForPreTraining, tokenizer: Tokenizer, text: str, top_k: int
) -> tuple[Encoding, list[list[tuple[str, float]]]]:
    """One text's encoding and its candidates per [MASK]."""
    _check_fill_mask_model(model)
    enc = masked_encoding(tokenizer, text)
    return enc, _candidates(model, tokenizer, [enc], [as_whole_number(top_k, "top_k")], lambda _: shown(text))[0]


def masked_encoding(tokenizer: Tokenizer, text: str) -> Encoding:
    """`text` as fill-mask reads it (cut at the model's maximum length); a BertkitError for a text that is not a
    string or holds no [MASK], a MaskPastTheCutError for one with a [MASK] past the cut."""
    if not isinstance(text, str):
        raise BertkitError(f"text must be a string, got {type(text).__name__}")
    enc = tokenizer.encode(text)
    if mask_past_the_cut(tokenizer, enc):  # first: the text's only [MASK] may lie past the cut
        raise MaskPastTheCutError(mask_past_the_cut_message(enc))
    if tokenizer.mask_id not in enc.input_ids:
        raise BertkitError(f"no [MASK] in {shown(text)}: write [MASK] where a token should be predicted")
    return enc


def _check_fill_mask_model(model: BertForPreTraining) -> None:
    torch_model = isinstance(model, torch.nn.Module)  # or its ONNX export (bertkit.onnx_model), called alike
    if (torch_model and not isinstance(model, BertForPreTraining)) or not callable(model):
        raise BertkitError(f"fill-mask needs a pre-trained model with its masked-LM head (a BertForPreTraining: "
                           f"open_model_dir(dir).mlm, where the directory holds that head), got "
                           f"{type(model).__name__}")  # fmt: skip
    untrained = [n for n in getattr(model, "fresh_parameters", []) if n.startswith("mlm.")]
    if untrained:  # loaded from an encoder-only directory: its answers would be random
        raise BertkitError(f"the model's masked-LM head was not in its checkpoint ({untrained[0]} started at "
                           "random): fill-mask needs a pre-trained model with that head")  # fmt: skip


def _answer(text: str, enc: Encoding, masks: list[list[tuple[str, float]]]) -> dict:
    answer = {"text": text, "masks": [[{"token": t, "score": p} for t, p in m] for m in masks]}
    return {**answer, "truncated": True} if enc.truncated else answer


@torch.inference_mode()
def _candidates(
    model: BertForPreTraining,
    tokenizer: Tokenizer,
    encodings: list[Encoding],
    top_ks: list[int],
    name: Callable[[int], str],
) -> list[list[list[tuple[str, float]]]]:
    """Per encoding (with its top_k), per [MASK], its `top_k` candidates (token, probability), from one forward
    pass; `name(j)` says in an error which text encodings[j] is."""
    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in tokenizer.pad(encodings).items()}
    at = (batch["input_ids"] == tokenizer.mask_id) & batch["attention_mask"].bool()  # (B, T) the [MASK]s
    # A PyTorch model decodes the [MASK]s alone, (P, V); an ONNX export decodes every position, (B, T, V).
    logits = model(**batch, outputs_at=at).mlm_logits
    logits = (logits[at] if logits.dim() == 3 else logits).float()  # (P, V), in row order
    logits[:, sorted(tokenizer.special_ids)] = -torch.inf
    probs = logits.softmax(-1)
    most = min(max(top_ks), probs.shape[-1] - len(tokenizer.special_ids))  # never a special token
    top = probs.topk(most, dim=-1)
    values, indices = top.values.tolist(), top.indices.tolist()
    finite = torch.isfinite(probs).all(-1).tolist()
    out, row = [], 0
    for j, (k, masks) in enumerate(zip(top_ks, at.sum(1).tolist(), strict=True)):
        if not all(finite[row : row + masks]):
            raise NonFiniteOutputError(
                f"the model computed NaN or infinite scores for {name(j)}: its weights are unusable"
            )
        out.append([
            [(tokenizer.vocab[i], p) for p, i in zip(values[r][:k], indices[r][:k], strict=True)]
            for r in range(row, row + masks)
        ])  # fmt: skip
        row += masks
    return out
