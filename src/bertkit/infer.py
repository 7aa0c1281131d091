"""Inference pipelines over a model directory: sentence embeddings and fill-mask."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bertkit.errors import BertkitError
from bertkit.model import BertForPreTraining, BertModel
from bertkit.tokenizer import Tokenizer


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that the attention mask keeps: (B, T, H) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embedding_settings(path: str | Path) -> dict:
    """Pooling and length settings of a sentence-transformers directory, when it has them."""
    path = Path(path)
    settings = {"pooling": "mean", "normalize": True, "max_length": None}
    st = path / "sentence_bert_config.json"
    if st.is_file():
        settings["max_length"] = json.loads(st.read_text()).get("max_seq_length")
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file() and json.loads(pooling.read_text()).get("pooling_mode_cls_token"):
        settings["pooling"] = "cls"
    return settings


@torch.inference_mode()
def embed(
    model: BertModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int | None = None,
    pooling: str = "mean",
    normalize: bool = True,
    device: torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Sentence embeddings (N, H) as float32: mean (or [CLS]) pooling, L2-normalised by default.

    Texts are batched by length so that little work goes to padding; the output keeps the input order.
    """
    device = device or next(model.parameters()).device
    model.eval()
    encodings = tokenizer.encode_batch(list(texts), max_length=max_length)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
    out = np.zeros((len(encodings), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc="embed", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in tokenizer.pad([encodings[i] for i in idx]).items()}
        hidden = model(**batch).last_hidden_state  # (B, T, H)
        vec = mean_pool(hidden, batch["attention_mask"]) if pooling == "mean" else hidden[:, 0]
        if normalize:
            vec = torch.nn.functional.normalize(vec, p=2, dim=-1)
        out[idx] = vec.float().cpu().numpy()
    return out


@torch.inference_mode()
def fill_mask(
    model: BertForPreTraining, tokenizer: Tokenizer, text: str, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """For each `[MASK]` in `text`, the `top_k` most likely tokens with their probabilities (special tokens
    excluded), as the masked-LM head predicts them."""
    model.eval()
    enc = tokenizer.encode(text)
    positions = [i for i, t in enumerate(enc.input_ids) if t == tokenizer.mask_id]
    if not positions:
        raise BertkitError(f"no [MASK] in {text!r}: write [MASK] where a token should be predicted")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in tokenizer.pad([enc]).items()}
    logits = model(**batch).mlm_logits[0, positions].float()  # (M, V)
    logits[:, sorted(tokenizer.special_ids)] = -torch.inf
    probs = logits.softmax(-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        [(tokenizer.vocab[i], float(p)) for p, i in zip(ps.tolist(), ids.tolist(), strict=True)]
        for ps, ids in zip(top.values, top.indices, strict=True)
    ]
