"""`bertkit embed` as a real client: the MiniLM sentence embeddings equal sentence-transformers' own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from realdata import corpus_lines, tsv_rows


def test_embed_matches_sentence_transformers(tmp_path: Path, minilm_dir: Path, data_dir: Path, bertkit) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [r["text"] for r in tsv_rows(data_dir / "sst2/dev.tsv")[:100]]
    english = corpus_lines(data_dir, "en", 5)
    # ... and two texts longer than the model's 256 tokens, which both sides must cut at the same place.
    texts += english + [" ".join(english[i : i + 12]) for i in (0, 40)]
    texts += [r["text"] for r in tsv_rows(data_dir / "chnsenticorp/dev.tsv")[:40]]
    assert len(texts) >= 200
    inp = tmp_path / "sentences.txt"
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    r = bertkit("embed", "--model", minilm_dir, "--input", inp, "--out", out, "--device", "cpu")
    assert r.status == 0, r.err
    ours = np.load(out)
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    ref = model.encode(texts, batch_size=64, convert_to_numpy=True)
    long = sum(len(ids) > 256 for ids in model.tokenizer(texts)["input_ids"])  # transformers' count of the cut ones
    assert long >= 2 and f"note: {long} of {len(texts)} texts in {inp} are longer than 256 tokens" in r.err
    assert ours.shape == ref.shape == (len(texts), 384)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999, f"lowest cosine {cos.min()} at line {cos.argmin()}"
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # More than the model's 512 positions: refused before any work (it failed at the first long text).
    r = bertkit("embed", "--model", minilm_dir, "--input", inp, "--out", tmp_path / "x.npy", "--max-seq-length", "5000")
    assert r.status == 2 and "positions: give 512 or less" in r.err and not (tmp_path / "x.npy").exists(), r.err


def test_one_row_per_input_line_from_a_file_or_standard_input(tmp_path: Path, minilm_dir: Path) -> None:
    # Standard input was split by str.splitlines, which also ends a line at a form feed, U+2028 or U+0085: the
    # same text gave 3 rows from a file and 6 from standard input, so rows no longer matched the input's lines.
    from helpers import run_bertkit

    # A CR alone ends a line (an old Mac file), as task files read it: such a file was one text, one row.
    text = "a\fb\nc\u2028d\r\ne\x85f\ng\rh\n"
    inp = tmp_path / "in.txt"
    inp.write_text(text, encoding="utf-8", newline="")
    rows = {}
    for name, source, stdin in (("file", str(inp), None), ("stdin", "-", text)):
        r = run_bertkit("embed", "--model", minilm_dir, "--input", source, "--out", tmp_path / f"{name}.npy",
                        stdin=stdin)  # fmt: skip
        assert r.status == 0, r.err
        rows[name] = np.load(tmp_path / f"{name}.npy")
    assert rows["file"].shape == rows["stdin"].shape == (5, 384)
    assert np.allclose(rows["file"], rows["stdin"], atol=1e-6)  # the same texts, the same process settings


def test_cls_pooling_matches_sentence_transformers(tmp_path: Path, minilm_dir: Path) -> None:
    """A model whose sentence-transformers pooling reads [CLS] (as BGE models do): bertkit's last layer then
    computes the [CLS] rows alone, and the vectors equal sentence-transformers' own for that pooling, over texts of
    mixed lengths and scripts in one batch (cosine >= 0.99999, as for mean pooling)."""
    from sentence_transformers import SentenceTransformer

    from bertkit import BertModel, Tokenizer
    from bertkit.infer import embed, embedding_settings

    model_dir = tmp_path / "cls_pooled"
    shutil.copytree(minilm_dir, model_dir)
    pooling = model_dir / "1_Pooling/config.json"
    settings = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**settings, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    texts = ["it 's a charming and often affecting journey .", "好", "这个宾馆比较陈旧了，特价的房间也很一般。",
             "unflinchingly bleak and desperate " * 20, "Tokyo 東京 is big; 서울 too."]  # fmt: skip
    chosen = embedding_settings(model_dir)
    assert chosen["pooling"] == "cls"
    encoder = BertModel.from_pretrained(model_dir)
    reads = []  # what the last layer was told to compute: ReadTokens, or None for every token
    encoder.layers[-1].register_forward_pre_hook(lambda module, args: reads.append(args[3]))
    ours = embed(encoder, Tokenizer.from_pretrained(model_dir), texts, pooling=chosen["pooling"],
                 normalize=chosen["normalize"], max_length=chosen["max_length"])  # fmt: skip
    assert reads and all(r is not None and r.count == len(texts) for r in reads)  # one row per text: its [CLS]
    ref = SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_numpy=True)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999, cos
    mean = embed(BertModel.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir), texts)
    assert ((mean * ours).sum(1) < 0.999).all()  # a different pooling, really: the test can tell them apart
