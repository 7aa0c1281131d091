"""Inference pipelines against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertkit import BertForPreTraining, BertkitError, Tokenizer
from bertkit.infer import MaskPastTheCutError, embedding_settings, fill_mask, fill_mask_answer, fill_mask_answers


def test_fill_mask_matches_transformers(tiny_zh_pretrained: Path) -> None:
    # The shared tiny Chinese model: a random MLM head and a lowercasing 3,000-piece vocabulary, read by both.
    tok = Tokenizer.from_pretrained(tiny_zh_pretrained)
    model = BertForPreTraining.from_pretrained(tiny_zh_pretrained)
    text = "今天天气很[MASK]，我们不得不[MASK]消户外运动。"
    ours = fill_mask(model, tok, text, top_k=5)
    ref = transformers.BertForPreTraining.from_pretrained(tiny_zh_pretrained).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_zh_pretrained)
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


def test_embedding_settings_follow_sentence_transformers_files(tmp_path: Path, minilm_dir: Path) -> None:
    assert embedding_settings(minilm_dir) == {"pooling": "mean", "normalize": True, "max_length": 256}
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling/config.json").write_text(
        '{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}'
    )
    assert embedding_settings(tmp_path)["pooling"] == "cls"
    (tmp_path / "plain").mkdir()  # a model directory without sentence-transformers files: the defaults
    assert embedding_settings(tmp_path / "plain") == {"pooling": "mean", "normalize": True, "max_length": None}
    with pytest.raises(BertkitError, match="absent does not exist"):  # not the defaults for a folder not there
        embedding_settings(tmp_path / "absent")


@pytest.mark.parametrize(
    ("file", "text", "said"),
    [
        ("1_Pooling/config.json", '{"pooling_mode_cls_token": tru', "not valid JSON"),
        ("1_Pooling/config.json", "[true]", "expected a JSON object of settings, found list"),
        ("1_Pooling/config.json", '{"pooling_mode_cls_token": "false"}', 'pooling_mode_cls_token is "false": expected'),
        ("1_Pooling/config.json", '{"pooling_mode_max_tokens": true}', "pooling pooling_mode_max_tokens is not supp"),
        (
            "1_Pooling/config.json",
            '{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}',
            "pooling pooling_mode_mean_tokens + pooling_mode_cls_token is not supported",
        ),
        ("sentence_bert_config.json", '{"max_seq_length": "256"}', 'max_seq_length is "256": expected a positive'),
        ("sentence_bert_config.json", "{", "not valid JSON"),
    ],
)
def test_broken_sentence_transformers_settings_name_the_file(tmp_path: Path, file: str, text: str, said: str) -> None:
    """Invalid JSON, wrong types and pooling bertkit does not compute are one-line errors naming the file: silently
    pooling by mean instead of max would give wrong vectors with exit 0."""
    path = tmp_path / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(BertkitError) as e:
        embedding_settings(tmp_path)
    assert str(e.value).startswith(f"{path}: ") and said in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_fill_mask_refuses_a_mask_past_the_models_length(tiny_zh_pretrained: Path) -> None:
    # Two [MASK]s, the second past the cut: answered for the first alone, exit 0 (the answer looked complete).
    model, tok = BertForPreTraining.from_pretrained(tiny_zh_pretrained), Tokenizer.from_pretrained(tiny_zh_pretrained)
    long_text = "今天天气很[MASK]。" + "我们去公园散步吧。" * 80 + "明天[MASK]雨。"
    with pytest.raises(BertkitError, match="a \\[MASK\\] lies past the first"):
        fill_mask(model, tok, long_text)
    assert len(fill_mask(model, tok, long_text[: -len("明天[MASK]雨。")])) == 1  # the one it reads: answered
    with pytest.raises(BertkitError, match="a \\[MASK\\] lies past the first"):  # the only one: not "no [MASK]"
        fill_mask(model, tok, "我们去公园散步吧。" * 80 + "明天[MASK]雨。")
    # Its answer says that the text was cut (the context after the cut was not read); a text that fits does not.
    cut = fill_mask_answer(model, tok, long_text[: -len("明天[MASK]雨。")])
    assert cut["truncated"] is True and len(cut["masks"]) == 1
    whole, best = fill_mask_answer(model, tok, "今天天气很[MASK]。"), fill_mask(model, tok, "今天天气很[MASK]。")[0][0]
    assert "truncated" not in whole and (whole["masks"][0][0]["token"], whole["masks"][0][0]["score"]) == best
    exact = "今" * (tok.model_max_length - 2 - 1) + "[MASK]"  # fills the model's length exactly: nothing cut
    assert len(tok.encode(exact)) == tok.model_max_length and "truncated" not in fill_mask_answer(model, tok, exact)
    everything = fill_mask(model, tok, "今天天气很[MASK]。", top_k=10**6)[0]  # more than the vocabulary holds
    assert len(everything) == tok.vocab_size - len(tok.special_ids)
    assert not {token for token, _ in everything} & {tok.vocab[i] for i in tok.special_ids}


def test_the_pretraining_model_decodes_only_the_positions_read(tiny_zh_pretrained: Path) -> None:
    """With `outputs_at`, the encoder's last layer and the vocabulary-sized decoder run at those positions alone:
    the same logits as decoding every position (within 1e-5: the last layer's products have other shapes)."""
    model, tok = (
        BertForPreTraining.from_pretrained(tiny_zh_pretrained).eval(),
        Tokenizer.from_pretrained(tiny_zh_pretrained),
    )
    batch = tok.batch(["今天天气很[MASK]，我们不得不[MASK]消户外运动。", "[MASK]好"])
    at = batch["input_ids"] == tok.mask_id
    with torch.inference_mode():
        every = model(**batch).mlm_logits  # (B, T, V)
        read = model(**batch, outputs_at=at).mlm_logits  # (P, V)
    assert read.shape == (3, model.config.vocab_size)
    assert (read - every[at]).abs().max() <= 1e-5
    with pytest.raises(BertkitError, match="not both"):
        model(**batch, mlm_labels=torch.where(at, batch["input_ids"], -100), outputs_at=at)
    with pytest.raises(BertkitError, match="outputs_at must be a bool tensor"):
        model(**batch, outputs_at=at.long())


def _same_candidates(got: list[dict], want: list[dict], tol: float = 1e-5) -> bool:
    """Two answers' candidates for one [MASK], best first: scores within `tol` rank by rank, and the same token at
    every rank whose score stands apart from its neighbours' by more than `tol` (a near-tie may swap)."""
    scores = [c["score"] for c in want]
    if len(got) != len(want) or max((abs(g["score"] - s) for g, s in zip(got, scores, strict=True)), default=0) > tol:
        return False
    apart = [
        all(abs(scores[r] - scores[o]) > tol for o in (r - 1, r + 1) if 0 <= o < len(scores))
        for r in range(len(scores))
    ]
    return all(g["token"] == w["token"] for g, w, a in zip(got, want, apart, strict=True) if a)


def test_fill_mask_answers_for_many_texts_equal_each_alone_from_one_forward(tiny_zh_pretrained: Path) -> None:
    """Texts of different lengths, with one to three [MASK]s and top_k of their own (one cut at the model's
    length, its [MASK] before the cut), answered in one forward pass whose decoder reads the [MASK]s alone: each
    answer equals the text's answer alone (scores within 1e-5: other batch shapes)."""
    model, tok = BertForPreTraining.from_pretrained(tiny_zh_pretrained), Tokenizer.from_pretrained(tiny_zh_pretrained)
    texts = ["今天天气很[MASK]。", "[MASK]", "我们不得不[MASK]消户外运动，[MASK]天再去[MASK]。",
             "今天天气很[MASK]。" + "我们去公园散步吧。" * 80]  # fmt: skip
    ks = [3, 1, 5, 2]
    shapes = []
    hook = model.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.mlm_logits.shape)))
    try:
        together = fill_mask_answers(model, tok, texts, ks)
    finally:
        hook.remove()
    assert shapes == [(6, model.config.vocab_size)]  # one forward; the decoder at the 6 [MASK]s alone
    for text, k, got in zip(texts, ks, together, strict=True):
        alone = fill_mask_answer(model, tok, text, top_k=k)
        assert got.keys() == alone.keys() and got["text"] == text and len(got["masks"]) == len(alone["masks"])
        assert all(_same_candidates(g, a) for g, a in zip(got["masks"], alone["masks"], strict=True)), (got, alone)
        assert all(len(m) == k for m in got["masks"])
    assert together[3]["truncated"] is True
    assert fill_mask_answers(model, tok, [], 3) == []
    with pytest.raises(BertkitError, match=r"^texts\[1\]: no \[MASK\] in"):
        fill_mask_answers(model, tok, ["今天[MASK]", "今天"])
    with pytest.raises(MaskPastTheCutError, match=r"^texts\[0\]: a \[MASK\] lies past the first"):
        fill_mask_answers(model, tok, ["我们去公园散步吧。" * 80 + "明天[MASK]雨。"])
    with pytest.raises(BertkitError, match="top_k gives 2 numbers for 1 texts"):
        fill_mask_answers(model, tok, ["今天[MASK]"], [1, 2])
    for top_k, said in (("12", "top_k must be a whole number of 1 or more, got '12'"), (0, "^top_k must be"),
                        ([3, 0], r"^top_k\[1\] must be")):  # fmt: skip
        with pytest.raises(BertkitError, match=said):  # one value (a string is not one per text), or one per text
            fill_mask_answers(model, tok, ["今天[MASK]", "明天[MASK]"], top_k)
    with pytest.raises(BertkitError, match=r"^top_k must be"):  # checked even with no text
        fill_mask_answers(model, tok, [], 0)
    small = fill_mask_answers(model, tok, texts, ks, batch_size=2)  # two forward passes of similar lengths
    assert [len(m) for a in small for m in a["masks"]] == [len(m) for a in together for m in a["masks"]]
    with pytest.raises(BertkitError, match="must be a list of strings"):
        fill_mask_answers(model, tok, "今天[MASK]")
    with pytest.raises(BertkitError, match="encodings gives 0 for 1 texts"):
        fill_mask_answers(model, tok, ["今天[MASK]"], encodings=[])
    made = [tok.encode(t) for t in texts]  # a caller's own encodings: the same answers
    assert [a["masks"] for a in fill_mask_answers(model, tok, texts, ks, encodings=made)] == [
        a["masks"] for a in together
    ]


# Pieces a fill-mask text is made of: Chinese, Latin words, digits, punctuation, a [MASK].
_PIECES = st.sampled_from(
    ["今天", "天气", "很", "好", "我们", "公园", "hello", "world", " ", "42", "，", "。", "!", "[MASK]"]
)
_MASKED_TEXT = st.lists(_PIECES, min_size=0, max_size=40).map(lambda p: "".join(p) + "[MASK]")


@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.tuples(_MASKED_TEXT, st.integers(1, 8)), min_size=1, max_size=6))
def test_fill_mask_answers_in_a_batch_equal_each_alone_for_any_texts(
    tiny_fill_mask: tuple[BertForPreTraining, Tokenizer], texts: list[tuple[str, int]]
) -> None:
    """Any texts (mixed scripts, several [MASK]s, lengths 1 to ~120 tokens) with their own top_k: each answer in a
    batch equals the text's answer alone (see `_same_candidates`)."""
    model, tok = tiny_fill_mask
    together = fill_mask_answers(model, tok, [t for t, _ in texts], [k for _, k in texts])
    for (text, k), got in zip(texts, together, strict=True):
        alone = fill_mask_answer(model, tok, text, top_k=k)
        assert len(got["masks"]) == len(alone["masks"]) == text.count("[MASK]")
        assert all(_same_candidates(g, a) for g, a in zip(got["masks"], alone["masks"], strict=True)), text


@pytest.fixture(scope="module")
def tiny_fill_mask(tiny_zh_pretrained: Path) -> tuple[BertForPreTraining, Tokenizer]:
    return BertForPreTraining.from_pretrained(tiny_zh_pretrained), Tokenizer.from_pretrained(tiny_zh_pretrained)


def test_embeddings_in_chunks_equal_all_at_once(
    tiny_zh_pretrained: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`embed` encodes a large input a chunk at a time (memory flat in the number of texts): each text's vector,
    in its own row, equals the one computed with every text at once, within float32 rounding (its batch
    companions change its padding)."""
    import bertkit.infer
    from bertkit.infer import embed
    from bertkit.model import BertModel

    texts = (data_dir / "chnsenticorp/dev.tsv").read_text(encoding="utf-8").splitlines()[1:24]
    tok = Tokenizer.from_pretrained(tiny_zh_pretrained)
    model = BertModel.from_pretrained(tiny_zh_pretrained)
    whole = embed(model, tok, texts, batch_size=4)
    monkeypatch.setattr(bertkit.infer, "INFERENCE_CHUNK", 5)
    chunked = embed(model, tok, texts, batch_size=4)
    assert chunked.shape == whole.shape == (23, model.config.hidden_size)
    assert abs(chunked - whole).max() < 1e-5
