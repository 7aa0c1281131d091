"""The tokenizer's public API for callers below the model: token spans, word pieces, the CJK test, padding.

The oracle for `encode_with_offsets` and `encode_words` is the Rust tokenizer called as task and data code called
it before these methods existed (`encode_batch(..., add_special_tokens=False)`, pre-tokenized for words).
No shared data: a vocabulary built here, with whole words, `##` pieces, CJK characters and punctuation.
"""

from __future__ import annotations

import re

import pytest
import torch

from bertkit.tokenizer import (
    _ALL_CJK_RANGES,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenSpans,
    contains_cjk,
    encoder_inputs,
    is_cjk,
    pad_rows,
)

CHINESE = ["今天天气很好。", "「你好」！我们去北京，好吗？", "\u3000中文\u3000", "中 文，。", "\uf900\uf901丽"]
ENGLISH = ["Hello, world!", "unaffable people don't stop", "U.S.A. 1998", "Héllo  wörld\tagain"]
MIXED = ["我用BERT做NER，F1是0.9。", "天安[MASK]京", "他说hello世界!", "中文abc", "a\u0000b 中\u200b文"]
EDGE = ["", " ", "\u3000", "。", "[UNK]"]
TEXTS = CHINESE + ENGLISH + MIXED + EDGE


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    words = ["hello", "world", "again", "people", "don", "stop", "una", "u", "s", "a", "19", "bert", "ner", "f1"]
    pieces = ["##ffa", "##ble", "##98", "##t", "##0", "##9", "##llo", "##b", "##c"]
    chinese = [*"今天气很好你我们去北京吗中文用做是安他说世界丽", "##天", "##文"]
    punctuation = list(".,!?'。，！？「」")
    return Tokenizer([*SPECIAL_TOKENS, *words, *pieces, *chinese, *punctuation, "0", "9", "he", "abc"])


def test_vocabulary_mixes_table_lookup_and_rust_paths(tok: Tokenizer) -> None:
    """Both ways `_encode_segments` takes are exercised: otherwise the comparisons below prove half of it."""
    covered = [t for t in TEXTS if tok._chars.covers(t)]
    assert set(CHINESE) - {"\uf900\uf901丽"} <= set(covered) and not set(ENGLISH) & set(covered)


def test_ids_flat_equals_the_rust_segments(tok: Tokenizer) -> None:
    """`ids_flat` cuts texts at CJK ideographs and sends only the other runs to Rust: the ids stay those of whole
    texts, also where normalisation looks across characters (final sigma, compositions, marks, removed ones)."""
    import random

    rnd = random.Random(0)
    pool = [*"中文丽\uf900 ，。'.:aΣ\u0301\u0338<=\u200b\x00\t\u3000İ1Aﬁ가\u1161", "[MASK]", "\U00020000"]
    mixes = ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 10))) for _ in range(3000)]
    texts = [*TEXTS, "a中Σ", "aΣ中", "a.Σ中b", "<中\u0338", "中\u0301", "\u0301中", *mixes]
    for t in (tok, Tokenizer(tok.vocab, lowercase=False), Tokenizer(tok.vocab, tokenize_chinese_chars=False)):
        ids, counts = t.ids_flat(texts)
        want = [e.ids for e in t._rust.encode_batch(texts, add_special_tokens=False)]
        assert counts.tolist() == [len(w) for w in want]
        assert ids.tolist() == [i for w in want for i in w]
    assert [len(x) for x in tok.ids_flat([])] == [0, 0]


def test_truncated_and_cut_ids_are_what_the_cut_left_out(tok: Tokenizer) -> None:
    """An encoding knows whether it was cut, and which ids it lost, without encoding its text again: checked against
    the same text encoded whole, for single texts and pairs, at every length from none cut to all cut."""
    pairs = [(a, b) for a in TEXTS for b in (None, "今天天气很好。", "hello world again", "")]
    for a, b in pairs:
        whole = tok.encode(a, b, truncation=False)
        ids_a = whole.input_ids[1 : 1 + whole.sequence_ids.count(0)]
        ids_b = [i for i, s in zip(whole.input_ids, whole.sequence_ids, strict=True) if s == 1]
        for max_length in range(4, len(whole) + 2):
            enc = tok.encode(a, b, max_length=max_length)
            kept_a = enc.input_ids[1 : 1 + enc.sequence_ids.count(0)]
            kept_b = [i for i, s in zip(enc.input_ids, enc.sequence_ids, strict=True) if s == 1]
            assert enc.truncated == (len(whole) > max_length), (a, b, max_length)
            assert enc.cut_ids == ids_a[len(kept_a) :] + ids_b[len(kept_b) :], (a, b, max_length)
        assert not whole.truncated and whole.cut_ids == []


def test_an_empty_batch_is_a_zero_by_zero_batch(tok: Tokenizer) -> None:
    batch = tok.batch([])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(t.shape == (0, 0) and t.dtype == torch.long for t in batch.values())


def test_encode_with_offsets_equals_the_rust_segments(tok: Tokenizer) -> None:
    spans = tok.encode_with_offsets(TEXTS)
    rust = tok._rust.encode_batch(TEXTS, add_special_tokens=False)
    for text, got, want in zip(TEXTS, spans, rust, strict=True):
        assert isinstance(got, TokenSpans)
        assert (got.ids, got.offsets) == (want.ids, want.offsets), text
    assert [s.ids for s in spans] == tok.ids_batch(TEXTS)
    assert sum(len(s.ids) for s in spans) > 60  # the texts really were tokenized


def test_encode_with_offsets_are_encode_batch_spans_without_specials(tok: Tokenizer) -> None:
    spans = tok.encode_with_offsets(TEXTS)
    for text, s, enc in zip(TEXTS, spans, tok.encode_batch(TEXTS, max_length=512), strict=True):
        assert enc.input_ids == [tok.cls_id, *s.ids, tok.sep_id], text
        assert enc.offsets == [(0, 0), *s.offsets, (0, 0)], text
    offsets = tok.encode_with_offsets(["我用BERT做NER"])[0].offsets
    assert [("我用BERT做NER")[a:b] for a, b in offsets] == ["我", "用", "BERT", "做", "NER"]


SENTENCES = [
    ["今", "天", "天", "气"],
    ["Hello", "world", "!"],
    ["unaffable", "U.S.A.", "1998"],  # several pieces per word; a word split again at its punctuation
    ["我", "用", "BERT", "\u0000", " ", "做"],  # a control character and a space give no token
    ["[MASK]", "京"],
    [],
]


def test_encode_words_equals_the_rust_pretokenized_word_ids(tok: Tokenizer) -> None:
    per_sentence = tok.encode_words(SENTENCES)
    rust = tok._rust.encode_batch(SENTENCES, is_pretokenized=True, add_special_tokens=False)
    for words, per_word, enc in zip(SENTENCES, per_sentence, rust, strict=True):
        assert len(per_word) == len(words)
        assert [i for pieces in per_word for i in pieces] == enc.ids
        assert [w for w, pieces in enumerate(per_word) for _ in pieces] == enc.word_ids
    assert per_sentence[2][0] == tok.convert_tokens_to_ids(["una", "##ffa", "##ble"])
    assert per_sentence[3][3] == [] and per_sentence[3][4] == []


def test_encode_words_tokenizes_each_word_on_its_own(tok: Tokenizer) -> None:
    """Word w's pieces are the tokens of the word alone (as if white space surrounded it)."""
    for words, per_word in zip(SENTENCES, tok.encode_words(SENTENCES), strict=True):
        assert per_word == [tok.convert_tokens_to_ids(tok.tokenize(w)) for w in words]
    assert tok.encode_words((("Hello", "world"),)) == tok.encode_words([["Hello", "world"]])  # any sequences


def test_cjk_test_matches_the_tokenizer_blocks_and_the_old_bmp_pattern() -> None:
    """`is_cjk` is the original's `_is_chinese_char`; `bmp_only` is exactly the pattern that language detection,
    whole-word masking and CMRC scoring used (its own copy in each module), which leaves the supplementary
    planes out."""
    old = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
    full = {cp for lo, hi in _ALL_CJK_RANGES for cp in range(lo, hi + 1)}
    code_points = [*range(0xD800), *range(0xE000, 0x110000)]  # no lone surrogates
    assert [cp for cp in code_points if is_cjk(chr(cp), bmp_only=True)] == [
        cp for cp in code_points if old.match(chr(cp))
    ]
    assert {cp for cp in code_points if is_cjk(chr(cp))} == full
    assert len(full) - sum(1 for cp in full if cp < 0x10000) == 53_424  # the difference: all above U+FFFF
    assert is_cjk("中") and is_cjk("\U00020000") and not is_cjk("\U00020000", bmp_only=True)
    assert not any(is_cjk(s) for s in ("", "中文", "a", "。", "\u3000", "ア"))
    assert contains_cjk("abc中") and not contains_cjk("abc。") and not contains_cjk("")
    assert contains_cjk("a\U0002b820") and not contains_cjk("a\U0002b820", bmp_only=True)


def test_every_cjk_character_is_a_word_of_its_own(tok: Tokenizer) -> None:
    """What `is_cjk` says is what the tokenizer isolates: 'a' + c + 'a' gives three words exactly for CJK c."""
    samples = [chr(cp) for lo, hi in _ALL_CJK_RANGES for cp in (lo, (lo + hi) // 2, hi)]
    samples += ["a", "é", "ア", "한", "\u3000", "0"]
    for c in samples:
        words = tok._rust.pre_tokenizer.pre_tokenize_str("a" + c + "a")
        assert (len(words) == 3) == is_cjk(c), hex(ord(c))


def test_padding_routines() -> None:
    rows = [[5, 6, 7], [8]]
    assert pad_rows(rows, -1).tolist() == [[5, 6, 7], [8, -1, -1]]
    assert pad_rows(rows, 0, length=4).shape == (2, 4)
    out = encoder_inputs(rows, [[0, 0, 1], [0]], pad_id=9, length=4)
    assert out["input_ids"].tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert out["token_type_ids"].tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert all(t.dtype == torch.long for t in out.values())
