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


@pytest.mark.parametrize("lowercase", [True, False])
def test_training_gives_the_same_vocabulary_every_time(tmp_path: Path, data_dir: Path, lowercase: bool) -> None:
    """The `tokenizers` trainer alone numbered its `##c` pieces in hash-map order and broke ties between equally
    frequent merges by those numbers: two runs of the quickstart's own vocabulary step gave different ids (and
    a few different rare pieces), so the same command and seed trained a different model."""
    english = sorted((data_dir / "pretrain_en").glob("*.txt"))[0].read_text(encoding="utf-8").splitlines()[:1500]
    chinese = sorted((data_dir / "pretrain_zh").glob("*.txt"))[0].read_text(encoding="utf-8").splitlines()[:300]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(english + chinese) + "\n", encoding="utf-8")
    vocabularies = [Tokenizer.train([corpus], vocab_size=3000, lowercase=lowercase, show_progress=False).vocab
                    for _ in range(3)]  # fmt: skip
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]
    assert any(t.startswith("##") for t in vocabularies[0])


def test_training_shows_its_first_pass_against_the_corpus_size(tmp_path: Path, data_dir: Path, capsys) -> None:
    # The pass that counts characters showed nothing (the trainer's own bars cover only its pass): a large corpus
    # gave minutes of silence. The bar counts bytes against the files' sizes, so it has an ETA; the vocabulary is
    # the one trained without it. A missing file is still named as such, not as a failed size lookup.
    from bertkit import BertkitError

    corpus = sorted((data_dir / "pretrain_zh").glob("*.txt"))[:2]
    shown = Tokenizer.train(corpus, vocab_size=2000, show_progress=True).vocab
    updates = [u for u in capsys.readouterr().err.split("\r") if u.startswith("vocab: characters")]
    size = sum(p.stat().st_size for p in corpus)
    assert "100%" in updates[-1] and f"/{size / 1024**2:.2f}M" in updates[-1], updates[-1]
    assert shown == Tokenizer.train(corpus, vocab_size=2000, show_progress=False).vocab
    with pytest.raises(BertkitError, match=r"absent\.txt does not exist"):
        Tokenizer.train([*corpus, tmp_path / "absent.txt"], vocab_size=2000, show_progress=True)


def test_train_validates_vocab_size(tmp_path: Path) -> None:
    from bertkit import BertkitError

    with pytest.raises(BertkitError, match="too small"):
        Tokenizer.train([tmp_path / "x.txt"], vocab_size=3)


# ---------------------------------------------------------------- vocabulary vs model, settings files, paths
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def model_dir(tmp_path: Path, n_tokens: int, model_vocab_size: int) -> Path:
    """A directory as bertkit writes it: a tokenizer of n_tokens and a model config with model_vocab_size."""
    from bertkit import BertConfig

    path = tmp_path / "model"
    Tokenizer([*SPECIALS, *(f"w{i}" for i in range(n_tokens - 5))]).save_pretrained(path)
    BertConfig.preset("tiny", vocab_size=model_vocab_size).save(path / "config.json")
    return path


def edit_vocab(path: Path, keep: int | None = None, add: int = 0) -> None:
    lines = (path / "vocab.txt").read_text(encoding="utf-8").splitlines()[:keep]
    lines += [f"added{i}" for i in range(add)]
    (path / "vocab.txt").write_text("".join(t + "\n" for t in lines), encoding="utf-8")


def test_bertkit_directory_with_a_changed_vocab_is_an_error(tmp_path: Path) -> None:
    from bertkit import BertkitError

    path = model_dir(tmp_path, 40, 40)
    assert Tokenizer.from_pretrained(path).vocab_size == 40
    edit_vocab(path, keep=37)  # lost lines: every later id would take another token's embedding
    with pytest.raises(BertkitError, match=r"has 37 tokens but .*tokenizer_config.json records 40 .*was changed"):
        Tokenizer.from_pretrained(path)
    edit_vocab(path, keep=37, add=5)  # now longer than the model
    with pytest.raises(BertkitError, match=r"has 42 tokens but .* records 40"):
        Tokenizer.from_pretrained(path)


def test_tokenizer_larger_than_the_model_is_an_error_and_smaller_is_hugging_face_padding(tmp_path: Path) -> None:
    """Without bertkit's record (a Hugging Face directory), only the model's vocab_size can be checked: a larger
    vocabulary has ids without embeddings; a smaller one is the usual padded embedding table."""
    import json

    from bertkit import BertkitError

    path = model_dir(tmp_path, 40, 48)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    del cfg["bertkit"]
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    (path / "tokenizer.json").unlink()  # vocab.txt alone: its size is checked against tokenizer.json's otherwise
    assert Tokenizer.from_pretrained(path).vocab_size == 40  # 40 tokens, 48 embeddings
    edit_vocab(path, keep=30)
    assert Tokenizer.from_pretrained(path).vocab_size == 30
    edit_vocab(path, add=20)  # 50 > 48
    with pytest.raises(BertkitError, match=r"has 50 tokens but .*config.json has vocab_size 48: ids 48 to 49 have"):
        Tokenizer.from_pretrained(path)


def test_minilm_checkpoint_loads_with_a_padded_model_vocabulary(tmp_path: Path, minilm_dir: Path) -> None:
    import json
    import shutil

    for name in ("vocab.txt", "tokenizer_config.json", "config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    cfg = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert cfg["vocab_size"] == 30522 and "bertkit" not in (tmp_path / "tokenizer_config.json").read_text()
    cfg["vocab_size"] = 30528  # padded to a multiple of 64, as some checkpoints are
    (tmp_path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert Tokenizer.from_pretrained(tmp_path).vocab_size == 30522


def test_directory_bertkit_wrote_loads_in_transformers(tmp_path: Path, minilm_dir: Path) -> None:
    """bertkit's own key in tokenizer_config.json does not disturb transformers' loaders."""
    from transformers import AutoTokenizer, BertTokenizerFast
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    tok = Tokenizer.from_pretrained(minilm_dir)
    tok.save_pretrained(tmp_path)
    text, pair = "Héllo, wörld! 天安门 [MASK] naïve", "Second segment, 第二句。"
    expected = tok.encode(text, pair).input_ids
    for loader in (AutoTokenizer, BertTokenizerFast, BertTokenizerLegacy):
        hf = loader.from_pretrained(str(tmp_path))
        assert hf(text, pair)["input_ids"] == expected, loader.__name__
        assert hf.vocab_size == tok.vocab_size


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"do_lower_case": true,', r"tokenizer_config.json: not valid JSON \(.* at line 1, column"),
        ("[]", r"tokenizer_config.json: expected a JSON object"),
        ('{"do_lower_case": "false"}', r'tokenizer_config.json: field do_lower_case is "false"; it must be true or'),
        ('{"strip_accents": 0}', r"field strip_accents is 0; it must be true, false or null"),
        ('{"tokenize_chinese_chars": null}', r"field tokenize_chinese_chars is null"),
        ('{"model_max_length": "512"}', r'field model_max_length is "512"; it must be a positive integer'),
        ('{"model_max_length": 0}', r"field model_max_length is 0"),
        ('{"bertkit": {"vocab_size": "40"}}', r'field bertkit.vocab_size is "40"'),
        ('{"bertkit": 40}', r"field bertkit is 40"),
    ],
)
def test_broken_tokenizer_config_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    from bertkit import BertkitError

    Tokenizer(SPECIALS).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(content, encoding="utf-8")
    with pytest.raises(BertkitError, match=message) as e:
        Tokenizer.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_settings_that_hugging_face_writes_are_accepted(tmp_path: Path) -> None:
    Tokenizer(SPECIALS).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(
        '{"do_lower_case": false, "strip_accents": true, "model_max_length": 1000000000000000019884624838656}',
        encoding="utf-8",
    )
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.lowercase, tok.strip_accents, tok.model_max_length) == (False, True, 512)


def test_missing_model_directory_says_it_does_not_exist(tmp_path: Path) -> None:
    from bertkit import BertkitError

    (tmp_path / "model").mkdir()
    with pytest.raises(BertkitError, match=r"modle does not exist; did you mean .*model\?"):
        Tokenizer.from_pretrained(tmp_path / "modle")
    with pytest.raises(BertkitError, match=r"nowhere/model does not exist; check the path"):
        Tokenizer.from_pretrained(tmp_path / "nowhere" / "model")
    with pytest.raises(BertkitError, match=r"no vocab.txt in .*model \(nor a tokenizer.json .*\): is this a"):
        Tokenizer.from_pretrained(tmp_path / "model")


def test_vocab_corpus_directory_asks_for_its_files(tmp_path: Path) -> None:
    from bertkit import BertkitError

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("some text\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"corpus is a directory: give its files, e\.g\. .*corpus/\*\.txt"):
        Tokenizer.train([tmp_path / "corpus"], vocab_size=100, show_progress=False)


def test_a_vocab_that_lost_lines_in_a_hugging_face_directory_is_caught(
    tmp_path: Path, minilm_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    """MiniLM's vocab.txt cut to 20,000 lines loaded silently (it is smaller than vocab_size, as a padded table
    is), and its embeddings came out wrong. tokenizer.json beside it still has every token: an error. Without
    tokenizer.json, a gap wider than padding adds is a warning."""
    import shutil

    from bertkit import BertkitError

    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "vocab.txt").write_text("\n".join(lines[:20000]) + "\n", encoding="utf-8")
    with pytest.raises(BertkitError, match=r"has 20000 tokens but tokenizer\.json beside it has 30522"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert Tokenizer.from_pretrained(tmp_path).vocab_size == 20000
    assert "10522 fewer than" in capsys.readouterr().err
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    Tokenizer.from_pretrained(tmp_path)
    assert capsys.readouterr().err == ""  # the whole vocabulary: nothing to say
