"""The main job on the bundled data. For now a smoke run of the foundation: vocabulary -> model directory ->
reload -> embeddings. Pre-training and fine-tuning join it as those stages land (see the issues)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bertkit.config import BertConfig
from bertkit.data.bundled import review_sentiment, write_peoples_daily_corpus
from bertkit.infer import embed
from bertkit.model import BertForPreTraining, BertModel
from bertkit.tokenizer import Tokenizer


def run_quickstart(out: Path, budget: float = 1.0, seed: int = 0) -> dict:
    """Run the demo into `out`; finished stages (corpus, tokenizer) are reused on a re-run."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus" / "peoples_daily_199801.txt"
    if not corpus.is_file():
        write_peoples_daily_corpus(corpus, max_paragraphs=max(200, int(20000 * budget)))
    print(f"[1/4] corpus: {corpus}")

    tok_dir = out / "tokenizer"
    if (tok_dir / "vocab.txt").is_file():
        tok = Tokenizer.from_pretrained(tok_dir)
    else:
        tok = Tokenizer.train([corpus], vocab_size=8000, lowercase=True)
        tok.save_pretrained(tok_dir)
    print(f"[2/4] WordPiece vocabulary: {tok.vocab_size} tokens -> {tok_dir}")

    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=tok.vocab_size)).eval()
    text_a, text_b = "今天天气很好，我们去公园散步。", "公园里的花都开了。"
    batch = tok.batch([text_a], [text_b])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 3] = batch["input_ids"][0, 3]
    batch["input_ids"][0, 3] = tok.mask_id
    with torch.no_grad():
        loss = model(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0])).loss
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    chance = math.log(tok.vocab_size) + math.log(2)
    print(f"[3/4] untrained tiny BERT: MLM+NSP loss {loss.item():.2f} (chance {chance:.2f}) -> {model_dir}")

    encoder = BertModel.from_pretrained(model_dir)
    sentences = [t for t, _ in review_sentiment()[:3]]
    vectors = embed(encoder, tok, sentences)
    print(
        f"[4/4] reloaded and embedded {len(sentences)} review sentences: shape {vectors.shape}, "
        f"cos(1,2) = {float(vectors[0] @ vectors[1]):.3f}"
    )
    print(f"everything is in {out}")
    return {"vocab_size": tok.vocab_size, "loss": loss.item(), "model_dir": str(model_dir)}
