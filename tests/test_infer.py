"""Inference pipelines against transformers."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.infer import fill_mask


def test_fill_mask_matches_transformers(tmp_path: Path, data_dir: Path) -> None:
    corpus = sorted((data_dir / "pretrain_zh").glob("*.txt"))[:1]
    tok = Tokenizer.train(corpus, vocab_size=3000, lowercase=True, show_progress=False)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=tok.vocab_size))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    text = "今天天气很[MASK]，我们不得不[MASK]消户外运动。"
    ours = fill_mask(model, tok, text, top_k=5)
    ref = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    enc = hf_tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = ref(**enc).prediction_logits[0]
    positions = (enc["input_ids"][0] == hf_tok.mask_token_id).nonzero().flatten().tolist()
    assert len(ours) == len(positions) == 2
    for pos, predicted in zip(positions, ours, strict=True):
        row = logits[pos].clone()
        row[hf_tok.all_special_ids] = -torch.inf
        probs = row.softmax(-1)
        top = probs.topk(5)
        assert [t for t, _ in predicted] == hf_tok.convert_ids_to_tokens(top.indices.tolist())
        assert max(abs(p - q) for (_, p), q in zip(predicted, top.values.tolist(), strict=True)) < 1e-5
