"""Tokenizer behaviour beyond id parity: truncation rule, offsets, specials, files, interop."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bertkit import Tokenizer
from bertkit.tokenizer import truncate_pair_lengths


def loop_truncate(la: int, lb: int, budget: int) -> tuple[int, int]:
    while la + lb > budget:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_closed_form_truncation_equals_the_original_loop() -> None:
    for la, lb, budget in itertools.product(range(40), range(40), range(1, 30)):
        assert truncate_pair_lengths(la, lb, budget) == loop_truncate(la, lb, budget), (la, lb, budget)


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir)


def test_segments_specials_and_offsets(tok: Tokenizer) -> None:
    a, b = "Héllo, wörld!", "天安[MASK]京"
    enc = tok.encode(a, b)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens == ["[CLS]", "hello", ",", "world", "!", "[SEP]", "天", "安", "[MASK]", "京", "[SEP]"]
    assert enc.token_type_ids == [0] * 6 + [1] * 5
    assert enc.sequence_ids == [None, 0, 0, 0, 0, None, 1, 1, 1, 1, None]
    spans = [
        (a if s == 0 else b)[x:y] for (x, y), s in zip(enc.offsets, enc.sequence_ids, strict=True) if s is not None
    ]
    assert spans == ["Héllo", ",", "wörld", "!", "天", "安", "[MASK]", "京"]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("가", ["ᄀ", "##ᅡ"]),  # accent stripping decomposes Hangul, and nothing composes it again
        ("\u09cb", ["ে", "##া"]),  # Bengali vowel sign O: NFD gives two spacing marks, both kept
        ("\u0bcb", ["ே", "##ா"]),  # Tamil vowel sign OO, likewise
        ("ΆΣ", ["α", "##ς"]),  # Python's str.lower() gives a final sigma at the end of a word
        ("ΣΑΣ'", ["σ", "##α", "##ς", "'"]),  # ... also before a case-ignorable apostrophe, not at a word's start
        ("ΌΣΟΣ", ["ο", "##σ", "##ος"]),
        ("a\u0378b", ["ab"]),  # an unassigned code point is dropped like a control character
        ("a\u07fdb", ["ab"]),  # a non-spacing mark from Unicode 11 is stripped like any accent
        ("x\u061dy", ["x", "[UNK]", "y"]),  # punctuation from Unicode 14 splits the word
    ],
)
def test_cases_where_the_original_algorithm_differed(tok: Tokenizer, minilm_dir: Path, text: str, tokens) -> None:
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    assert BertTokenizerLegacy(str(minilm_dir / "vocab.txt")).tokenize(text) == tokens  # the oracle says so
    assert tok.tokenize(text) == tokens
    assert tok.ids_batch([text]) == [tok.convert_tokens_to_ids(tokens)]


def test_extension_e_start_is_isolated_like_every_cjk_ideograph() -> None:
    """U+2B820..U+2B91F are CJK ideographs to the original (the Rust normaliser's table starts at U+2B920)."""
    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "\U0002b820", "##\U0002b820"])
    assert tok.tokenize("a\U0002b820a") == ["a", "\U0002b820", "a"]


def test_long_word_is_unk_and_truncation(tok: Tokenizer) -> None:
    assert tok.tokenize("a" * 101) == ["[UNK]"]
    assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    enc = tok.encode("word " * 300, max_length=16)
    assert len(enc) == 16 and enc.input_ids[-1] == tok.sep_id
    batch = tok.batch(["short", "a much longer sentence here"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() == 3


def test_saved_tokenizer_loads_in_transformers(tmp_path: Path, data_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = Tokenizer.train([data_dir / "pretrain_zh/luxun.txt"], vocab_size=3000, show_progress=False)
    tok.save_pretrained(tmp_path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).is_file()
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    lines = [line for line in (data_dir / "pretrain_zh/luxun.txt").read_text(encoding="utf-8").splitlines()[:300]]
    for line in lines:
        assert hf(line, truncation=True, max_length=64)["input_ids"] == tok.encode(line, max_length=64).input_ids


def test_train_validates_vocab_size(tmp_path: Path) -> None:
    from bertkit import BertkitError

    with pytest.raises(BertkitError, match="too small"):
        Tokenizer.train([tmp_path / "x.txt"], vocab_size=3)
