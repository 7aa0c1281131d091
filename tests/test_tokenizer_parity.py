"""Tokenizer parity with the original BERT algorithm on real Chinese and English text.

Oracle: `transformers`' BertTokenizerLegacy (the pure-Python port of Google's tokenization.py) on the same
vocab.txt, with pair truncation as the original `_truncate_seq_pair`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from realdata import pair_texts, single_texts

from bertkit import Tokenizer

MAX_LEN = 128


def original_truncate_seq_pair(a: list, b: list, max_num_tokens: int) -> None:
    # The loop from google-research/bert create_pretraining_data.py / run_classifier.py (without randomness).
    while len(a) + len(b) > max_num_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()


def oracle_encode(legacy, text: str, pair: str | None) -> tuple[list[int], list[int]]:
    a = legacy.convert_tokens_to_ids(legacy.tokenize(text))
    if pair is None:
        a = a[: MAX_LEN - 2]
        return [legacy.cls_token_id, *a, legacy.sep_token_id], [0] * (len(a) + 2)
    b = legacy.convert_tokens_to_ids(legacy.tokenize(pair))
    original_truncate_seq_pair(a, b, MAX_LEN - 3)
    ids = [legacy.cls_token_id, *a, legacy.sep_token_id, *b, legacy.sep_token_id]
    return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)


@pytest.fixture(scope="module")
def texts(data_dir: Path):
    singles, pairs = single_texts(data_dir), pair_texts(data_dir)
    assert len(singles) >= 20_000 and len(pairs) >= 5_000
    return singles, pairs


def check_parity(tok: Tokenizer, vocab_dir: Path, lowercase: bool, texts) -> None:
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    legacy = BertTokenizerLegacy(str(vocab_dir / "vocab.txt"), do_lower_case=lowercase)
    singles, pairs = texts
    mismatches = []
    ours = tok.encode_batch(singles, max_length=MAX_LEN)
    for text, enc in zip(singles, ours, strict=True):
        if (enc.input_ids, enc.token_type_ids) != oracle_encode(legacy, text, None):
            mismatches.append(text)
    ours = tok.encode_batch([a for a, _ in pairs], [b for _, b in pairs], max_length=MAX_LEN)
    n_truncated = 0
    for (a, b), enc in zip(pairs, ours, strict=True):
        expected = oracle_encode(legacy, a, b)
        n_truncated += len(expected[0]) == MAX_LEN
        if (enc.input_ids, enc.token_type_ids) != expected:
            mismatches.append((a, b))
    assert n_truncated > 100, "the sample must exercise pair truncation"
    assert not mismatches, f"{len(mismatches)} of {len(singles) + len(pairs)} differ, e.g. {mismatches[:3]}"


def test_parity_minilm_vocab(minilm_dir: Path, texts) -> None:
    check_parity(Tokenizer.from_pretrained(minilm_dir), minilm_dir, True, texts)


@pytest.mark.parametrize("lowercase", [True, False])
def test_parity_trained_vocab(tmp_path: Path, zh_corpus, texts, lowercase: bool) -> None:
    tok = Tokenizer.train(zh_corpus, vocab_size=12000, lowercase=lowercase, show_progress=False)
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.save_pretrained(tmp_path)
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert reloaded.vocab == tok.vocab and reloaded.lowercase == lowercase
    check_parity(reloaded, tmp_path, lowercase, texts)


@pytest.mark.parametrize("vocab", ["minilm", "trained"])
def test_table_lookup_path_equals_rust_path(tmp_path: Path, minilm_dir: Path, zh_corpus, vocab: str) -> None:
    """The table-lookup fast path (texts of CJK characters, punctuation and spaces) gives the same ids and offsets
    as the Rust tokenizer, on every sentence of the Chinese corpus and on edge cases."""
    from bertkit.data.sentences import iter_documents

    if vocab == "minilm":
        tok = Tokenizer.from_pretrained(minilm_dir)
    else:
        tok = Tokenizer.train(zh_corpus[:2], vocab_size=6000, lowercase=False, show_progress=False)
    sentences = [s for d in iter_documents(zh_corpus) for s in d]
    edge = ["", " ", "\u3000中文\u3000", "中 文，。", "\uf900\uf901丽", "「你好」！？…—", "中文abc", "《三国》第1回"]
    texts = sentences + edge
    covered = sum(tok._chars.covers(t) for t in texts)
    assert covered > 0.8 * len(texts), "the corpus must exercise the fast path"
    fast = tok._encode_segments(texts)
    slow = tok._rust.encode_batch(texts, add_special_tokens=False)
    bad = [t for t, f, s in zip(texts, fast, slow, strict=True) if (f.ids, list(f.offsets)) != (s.ids, s.offsets)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]}"
    assert tok.ids_batch(texts) == [s.ids for s in slow]
    ids, counts = tok.ids_flat(texts)
    assert counts.tolist() == [len(s.ids) for s in slow] and ids.tolist() == [i for s in slow for i in s.ids]


def test_table_lookup_characters_stay_one_word_each() -> None:
    """The table lookup tokenizes a covered text character by character. That equals tokenizing it whole only if
    no two of its characters (punctuation, BMP CJK ideographs) interact under normalisation: none is a combining
    mark or the second part of a canonical composition, and each one's NFC is again punctuation or CJK (seven
    compatibility ideographs become Extension B ones)."""
    import unicodedata

    from bertkit.tokenizer import _ALL_CJK_RANGES, _CJK_RANGES, _is_bert_punctuation

    table = {chr(c) for c in range(0x21, 0x10000) if _is_bert_punctuation(chr(c))}
    table |= {chr(c) for lo, hi in _CJK_RANGES for c in range(lo, hi + 1)}
    second_parts = set()
    for cp in range(0x110000):
        decomposition = unicodedata.decomposition(chr(cp)).split()
        if len(decomposition) == 2 and not decomposition[0].startswith("<"):
            second_parts.add(chr(int(decomposition[1], 16)))
    assert not table & second_parts
    assert not [c for c in table if unicodedata.combining(c)]
    isolated = table | {chr(c) for lo, hi in _ALL_CJK_RANGES for c in range(lo, hi + 1)}
    assert all(n in isolated for c in table for n in unicodedata.normalize("NFC", c))
