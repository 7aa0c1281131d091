"""Pre-training data on the real Chinese corpus: instances, NSP balance, masking statistics, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit import BertkitError, Tokenizer
from bertkit.constants import IGNORE_INDEX
from bertkit.data.config import PrepareConfig
from bertkit.data.masking import MaskingConfig
from bertkit.data.prepare import cut_sentences_note, prepare
from bertkit.data.pretraining import PretrainingData, collate
from bertkit.data.sentences import split_sentences


@pytest.fixture(scope="module")
def zh_tokenizer(tmp_path_factory, zh_corpus) -> Path:
    out = tmp_path_factory.mktemp("tok")
    Tokenizer.train(zh_corpus, vocab_size=8000, show_progress=False).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def zh_data(tmp_path_factory, zh_corpus, zh_tokenizer) -> Path:
    out = tmp_path_factory.mktemp("data") / "zh"
    prepare(zh_corpus, zh_tokenizer, out, PrepareConfig(seed=7), progress=False)
    return out


def test_split_sentences() -> None:
    assert split_sentences("他来了。她走了！真的吗？“好。”然后") == [
        "他来了。",
        "她走了！",
        "真的吗？",
        "“好。”",
        "然后",
    ]
    assert split_sentences("It rained. Then it stopped! Did it? yes.") == [
        "It rained.",
        "Then it stopped!",
        "Did it? yes.",
    ]
    assert split_sentences("一句话") == ["一句话"]
    # One sentence ending in a run of marks and closers stays whole; anything past that run is split off.
    assert split_sentences("是吗？！”") == ["是吗？！”"]
    assert split_sentences("他说……") == ["他说……"]
    assert split_sentences("他说………然后") == ["他说……", "…", "然后"]
    assert split_sentences("好。”。") == ["好。”", "。"]
    assert split_sentences("Mr. Smith came.") == ["Mr.", "Smith came."]
    # Chinese typed with half-width marks and no space: an end where an ideograph or opening quote follows.
    assert split_sentences("今天很好.我们去公园!明天呢?好的;走吧.") == [
        "今天很好.",
        "我们去公园!",
        "明天呢?",
        "好的;",
        "走吧.",
    ]
    assert split_sentences("他说好.”我们走") == ["他说好.”", "我们走"]
    assert split_sentences("价格是3.5元，U.S.军队") == ["价格是3.5元，U.S.军队"]  # ASCII before the mark: no end
    assert split_sentences("It rained.Then") == ["It rained.Then"]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet="好我。！？；….!?;”’」』）)]“「（ \t3aZ", max_size=40))
def test_split_sentences_keeps_every_character_in_order(line: str) -> None:
    parts = split_sentences(line)
    assert all(p and p == p.strip() for p in parts)
    assert "".join("".join(parts).split()) == "".join(line.split())


def test_instances_nsp_balance_and_lengths(zh_data: Path) -> None:
    data = PretrainingData(zh_data)
    m = data.manifest
    assert m["documents"]["eval"] > 0 and m["splits"]["eval"]["instances"] > 0
    index = np.concatenate([s.index for s in data.shards])
    assert len(index) > 20_000
    is_next = 1 - index[:, 3].mean()
    assert abs(is_next - 0.5) <= 0.01, is_next
    lengths = index[:, 1] + index[:, 2] + 3
    assert lengths.max() <= 128 and index[:, 1].min() >= 1 and index[:, 2].min() >= 1
    assert (lengths < 100).mean() > 0.05  # short_seq_prob gives some shorter instances


def test_masking_statistics_over_a_million_tokens(zh_data: Path) -> None:
    data = PretrainingData(zh_data, seed=3)
    tok = data.tokenizer
    special_ids = np.array(sorted(tok.special_ids))
    chosen = masked = kept = randomised = candidates = 0
    i = 0
    while candidates < 1_000_000:
        item = data[(0, i)]
        original = np.concatenate(_original_ids(data, i))
        labels, ids = item["mlm_labels"], item["input_ids"]
        special = np.isin(original, [tok.cls_id, tok.sep_id])
        assert (labels[special] == IGNORE_INDEX).all()  # [CLS]/[SEP] never chosen
        sel = labels != IGNORE_INDEX
        assert (labels[sel] == original[sel]).all()
        candidates += int((~special).sum())
        chosen += int(sel.sum())
        masked += int((ids[sel] == tok.mask_id).sum())
        kept += int((ids[sel] == original[sel]).sum())
        rnd = sel & (ids != tok.mask_id) & (ids != original)
        randomised += int(rnd.sum())
        assert not np.isin(ids[rnd], special_ids).any()  # random replacements are never special tokens
        i += 1
    assert abs(chosen / candidates - 0.15) <= 0.002, chosen / candidates
    assert abs(masked / chosen - 0.8) <= 0.01
    assert abs(kept / chosen - 0.1) <= 0.01
    assert abs(randomised / chosen - 0.1) <= 0.01
    batch = collate([data[(0, j)] for j in range(64)], tok.pad_id)
    assert (batch["mlm_labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding never chosen


def _original_ids(data: PretrainingData, i: int) -> tuple[np.ndarray, ...]:
    tokens, index = data.shards[0].tokens, data.shards[0].index
    off, la, lb, _ = index[i]
    tok = data.tokenizer
    a, b = tokens[off : off + la].astype(np.int64), tokens[off + la : off + la + lb].astype(np.int64)
    return np.array([tok.cls_id]), a, np.array([tok.sep_id]), b, np.array([tok.sep_id])


def test_dynamic_and_static_masking(zh_data: Path, tmp_path: Path, zh_corpus, zh_tokenizer) -> None:
    dynamic = PretrainingData(zh_data)
    assert not np.array_equal(dynamic[(0, 5)]["input_ids"], dynamic[(1, 5)]["input_ids"])
    assert np.array_equal(dynamic[(0, 5)]["input_ids"], dynamic[(0, 5)]["input_ids"])
    out = tmp_path / "static"
    m = prepare(zh_corpus[:1], zh_tokenizer, out, PrepareConfig(dupe_factor=2), progress=False)
    assert m["masking"] == "static"
    static = PretrainingData(out)
    assert np.array_equal(static[(0, 5)]["input_ids"], static[(3, 5)]["input_ids"])


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.bin")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_prepare_is_deterministic_for_a_seed_and_any_worker_count(tmp_path, zh_corpus, zh_tokenizer) -> None:
    corpus = zh_corpus[:2]
    small = dict(seed=11, block_chars=300_000)
    prepare(corpus, zh_tokenizer, tmp_path / "a", PrepareConfig(**small), progress=False)
    prepare(corpus, zh_tokenizer, tmp_path / "b", PrepareConfig(**small, workers=2), progress=False)
    prepare(corpus, zh_tokenizer, tmp_path / "c", PrepareConfig(seed=12, block_chars=300_000), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_progress_counts_the_corpus_bytes_to_the_end(tmp_path, zh_corpus, zh_tokenizer, capsys, monkeypatch) -> None:
    # A bar against the corpus's size in bytes, known from the start, can show an ETA (a count of documents cannot).
    monkeypatch.setattr("bertkit.progress.LOG_REDRAW_S", 0.0)  # every state drawn, though capsys is no terminal
    corpus = zh_corpus[:2]
    prepare(corpus, zh_tokenizer, tmp_path / "a", PrepareConfig(block_chars=200_000), progress=True)
    updates = [u for u in capsys.readouterr().err.split("\r") if u.startswith("prepare:")]
    percents = [int(u.split("%")[0].split()[-1]) for u in updates]
    assert percents == sorted(percents) and percents[-1] == 100 and any(0 < p < 100 for p in percents), updates
    size = sum(Path(p).stat().st_size for p in corpus)
    assert f"/{size / 1024**2:.2f}M" in updates[-1] and "docs=" in updates[-1] and "tok_s=" in updates[-1]


def test_items_are_laid_out_as_transformers_lays_out_a_pair(zh_data: Path, zh_tokenizer: Path) -> None:
    # [CLS] A [SEP] in segment 0, B [SEP] in segment 1: fine-tuning and transformers read a pair so.
    from transformers import BertTokenizer

    rust = BertTokenizer.from_pretrained(zh_tokenizer).backend_tokenizer

    def hf_pair(a: list[int], b: list[int]) -> tuple[np.ndarray, list[int]]:
        """transformers' pair layout (its post-processor's template) with A's and B's ids in their places."""
        one = rust.token_to_id("好")  # a token per character, to make segments of the lengths wanted
        a_enc, b_enc = (rust.encode(["好"] * len(x), is_pretokenized=True, add_special_tokens=False) for x in (a, b))
        assert a_enc.ids == [one] * len(a) and b_enc.ids == [one] * len(b)
        pair = rust.post_processor.process(a_enc, b_enc, True)
        ids = np.array(pair.ids)
        ids[~np.array(pair.special_tokens_mask, dtype=bool)] = a + b
        return ids, pair.type_ids

    data = PretrainingData(zh_data, seed=1)
    tokens, index = data.shards[0].tokens, data.shards[0].index
    for i in range(300):
        offset, len_a, len_b, _ = (int(v) for v in index[i])
        a, b = tokens[offset : offset + len_a].tolist(), tokens[offset + len_a : offset + len_a + len_b].tolist()
        item = data[(0, i)]
        want, types = hf_pair(a, b)
        assert item["token_type_ids"].tolist() == types
        chosen = item["mlm_labels"] != IGNORE_INDEX
        assert (item["input_ids"][~chosen] == want[~chosen]).all() and (
            item["mlm_labels"][chosen] == want[chosen]
        ).all()
        assert not chosen[[0, len_a + 1, len(want) - 1]].any()  # [CLS] and both [SEP]s are never masked


def test_whole_word_masking_never_splits_a_word(tmp_path: Path, data_dir: Path, zh_tokenizer) -> None:
    import jieba

    corpus = [data_dir / "pretrain_zh/zhwiki_sample.txt"]
    prepare(corpus, zh_tokenizer, tmp_path / "wwm", PrepareConfig(whole_word_mask=True), progress=False)
    data = PretrainingData(tmp_path / "wwm", masking=MaskingConfig(whole_word=True))
    index, starts = data.shards[0].index, data.shards[0].starts
    n_multi, n_chosen, n_candidates, n_masked, n_kept = 0, 0, 0, 0, 0
    mask_id = Tokenizer.from_pretrained(zh_tokenizer).mask_id
    for i in range(3000):
        off, la, lb, _ = index[i]
        flags = np.concatenate([[1], starts[off : off + la], [1], starts[off + la : off + la + lb], [1]])
        flags[[1, la + 2]] = 1  # a segment may begin inside a word (truncation): that part is a word of its own
        item = data[(0, i)]
        chosen = item["mlm_labels"] != IGNORE_INDEX
        n_chosen, n_candidates = n_chosen + chosen.sum(), n_candidates + la + lb
        n_masked += (item["input_ids"][chosen] == mask_id).sum()
        n_kept += (item["input_ids"][chosen] == item["mlm_labels"][chosen]).sum()
        word_id = np.cumsum(flags)
        for w in np.unique(word_id[chosen]):
            members = chosen[word_id == w]
            assert members.all(), f"instance {i}: word {w} partly masked"
            n_multi += len(members) > 1
    assert n_multi > 1000  # multi-character words really were masked together
    # Whole words still make up 15% of the tokens (a word that would overshoot is passed over for a shorter one),
    # 80% of them [MASK] and about 10% unchanged (the random 10% may also draw the token itself). 3000 instances:
    # the shares' sampling error is below 0.001 and 0.01.
    assert abs(n_chosen / n_candidates - 0.15) < 0.002, n_chosen / n_candidates
    assert abs(n_masked / n_chosen - 0.8) < 0.01 and abs(n_kept / n_chosen - 0.1) < 0.01, (n_masked, n_kept, n_chosen)
    # The stored word starts are jieba's segmentation.
    tok = Tokenizer.from_pretrained(zh_tokenizer)
    sentence = "北京大学的学生在图书馆里学习自然语言处理。"
    from bertkit.data import prepare as prep

    prep._init_worker(str(zh_tokenizer), PrepareConfig(whole_word_mask=True))
    enc = tok.encode_with_offsets([sentence])[0]
    flags = prep._word_starts(sentence, enc)
    words, pieces = [], ""
    for t, f in zip(tok.convert_ids_to_tokens(enc.ids), flags, strict=True):
        if f and pieces:
            words.append(pieces)
            pieces = ""
        pieces += t
    words.append(pieces)
    assert words == [w for w in jieba.lcut(sentence)]


def test_bad_corpora(tmp_path: Path, zh_tokenizer) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n\n", encoding="utf-8")
    with pytest.raises(BertkitError, match="no training instances"):
        prepare([empty], zh_tokenizer, tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()
    # Documents of one sentence each still give balanced NSP pairs (the sentence is split for IsNext).
    ones = tmp_path / "ones.txt"
    sentences = [f"这是第{i}个只有一句话的文档，内容各不相同。" for i in range(400)]
    ones.write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    m = prepare([ones], zh_tokenizer, tmp_path / "o", PrepareConfig(eval_fraction=0), progress=False)
    assert m["splits"]["train"]["instances"] >= 380
    assert 0.4 < m["splits"]["train"]["nsp_random_fraction"] < 0.6
    # A line far longer than the maximum length is cut into instances that fit.
    long = tmp_path / "long.txt"
    long.write_text("长" * 5000 + "。\n\n短文档。\n另一句。\n", encoding="utf-8")
    m = prepare([long], zh_tokenizer, tmp_path / "l", PrepareConfig(max_seq_length=64), progress=False)
    data = PretrainingData(tmp_path / "l")
    assert all(len(data[(0, i)]["input_ids"]) <= 64 for i in range(len(data)))
    with pytest.raises(BertkitError, match="already holds"):
        prepare([long], zh_tokenizer, tmp_path / "l", progress=False)


@pytest.mark.parametrize("length", [128, 512])
def test_the_masked_share_is_15_percent_at_any_sequence_length(length: int) -> None:
    # A cap fixed at 20 chosen tokens (the original's for 128) chose 4.6% of 512-token sequences' tokens, exit 0.
    from bertkit.data.masking import mask_sequence

    cfg = MaskingConfig().for_length(length)
    assert cfg.max_predictions == {128: 20, 512: 77}[length]
    assert MaskingConfig(max_predictions=20).for_length(512).max_predictions == 20  # a cap given stays
    ids = np.arange(5, 5 + length, dtype=np.int64)
    special = np.zeros(length, dtype=bool)
    special[[0, length // 2, length - 1]] = True  # [CLS], [SEP], [SEP]
    rng = np.random.default_rng(0)
    chosen = [int((mask_sequence(ids, special, rng, cfg, 3, np.arange(5, 100))[1] != -100).sum()) for _ in range(400)]
    assert abs(np.mean(chosen) / (length - 3) - 0.15) < 0.005  # the expected count is exact on average


def test_pairs_that_are_all_isnext_are_said(tmp_path: Path, zh_corpus, zh_tokenizer: Path, bertkit) -> None:
    # A corpus without blank lines is one document, so every NSP pair was IsNext, exit 0 and no word; data prepared
    # with --no-nsp still trained (and reported) NSP.
    from bertkit.data.pretraining import nsp_notes

    lines = [x for x in Path(zh_corpus[0]).read_text(encoding="utf-8").splitlines() if x.strip()][:400]
    one_document = tmp_path / "one.txt"
    one_document.write_text("\n".join(lines) + "\n", encoding="utf-8")
    m = prepare([one_document], zh_tokenizer, tmp_path / "one", PrepareConfig(eval_fraction=0), progress=False)
    assert m["splits"]["train"]["nsp_random_fraction"] == 0
    assert nsp_notes(m, "one") == [
        "note: the training pairs of one are all IsNext (from 1 document; a random B comes from another document, and "
        "documents are separated by blank lines): NSP learns to answer IsNext always"
    ]
    m = prepare(zh_corpus, zh_tokenizer, tmp_path / "many", PrepareConfig(eval_fraction=0), progress=False)
    assert 0.4 < m["splits"]["train"]["nsp_random_fraction"] < 0.6 and nsp_notes(m, "many") == []
    prepare(zh_corpus, zh_tokenizer, tmp_path / "no_nsp", PrepareConfig(nsp=False, eval_fraction=0), progress=False)
    r = bertkit("pretrain", "--data", tmp_path / "no_nsp", "--model", "tiny", "--out", tmp_path / "run",
                "--max-steps", "1", "--batch-size", "4", "--workers", "0")  # fmt: skip
    assert r.status == 0, r.err
    assert "prepared with --no-nsp: this run trains masked LM alone (--nsp-weight 0)" in r.out
    record = json.loads((tmp_path / "run/model/bertkit_pretraining.json").read_text())
    assert record["nsp_weight"] == 0.0


def test_a_sentence_longer_than_an_instance_is_cut_into_pieces_not_truncated(tmp_path: Path, zh_tokenizer) -> None:
    # A paragraph whose sentence ends are not recognised is one sentence; truncated to an instance, all but 125 of
    # its 2,200 tokens were dropped without a word.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("今天天气很好我们去公园玩" * 200 + "\n\n短句。第二句。\n", encoding="utf-8")
    m = prepare([corpus], zh_tokenizer, tmp_path / "out", PrepareConfig(eval_fraction=0, nsp=False), progress=False)
    assert m["sentences_cut"] == 1
    assert m["splits"]["train"]["tokens"] >= 0.9 * 2_400
    data = PretrainingData(tmp_path / "out")
    lengths = [len(data[(0, i)]["input_ids"]) for i in range(len(data))]
    assert max(lengths) <= 128
    note = cut_sentences_note(m)
    assert note is not None and note.startswith("note: 1 sentence of the corpus had more than 125 tokens")
    assert cut_sentences_note({**m, "sentences_cut": 0}) is None


def test_special_tokens_written_in_the_corpus_are_text(tmp_path: Path, zh_tokenizer) -> None:
    # "[MASK]" or "[SEP]" in a corpus became the special tokens inside A and B (separators and masks that no
    # masking chose); the original read them as text.
    corpus = tmp_path / "corpus.txt"
    docs = [f"第{i}篇。这里写着[MASK]和[SEP]。还有[CLS]与[PAD]以及[UNK]。" for i in range(20)]
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    for whole_word in (False, True):
        out = tmp_path / f"out{whole_word}"
        prepare([corpus], zh_tokenizer, out, PrepareConfig(eval_fraction=0, whole_word_mask=whole_word), progress=False)
        data = PretrainingData(out)
        tok = data.tokenizer
        tokens = np.concatenate([s[0] for s in data.shards]).astype(np.int64)
        assert not set(tokens.tolist()) & set(tok.special_ids)
        assert tok.token_to_id["["] in tokens
    assert Tokenizer.from_pretrained(zh_tokenizer).tokenize("[MASK]") == ["[MASK]"]  # elsewhere unchanged


def test_dupe_factor_copies_training_pairs_only(tmp_path: Path, zh_corpus, zh_tokenizer) -> None:
    one = prepare(zh_corpus[:1], zh_tokenizer, tmp_path / "one", PrepareConfig(eval_fraction=0.1), progress=False)
    two = prepare(zh_corpus[:1], zh_tokenizer, tmp_path / "two", PrepareConfig(eval_fraction=0.1, dupe_factor=2),
                  progress=False)  # fmt: skip
    assert two["splits"]["eval"]["instances"] == one["splits"]["eval"]["instances"] > 0
    assert 1.8 < two["splits"]["train"]["instances"] / one["splits"]["train"]["instances"] < 2.2


def test_no_isnext_b_begins_inside_a_word(tmp_path: Path, data_dir: Path) -> None:
    # A one-sentence IsNext chunk was split at any token: 19% of IsNext Bs began with a `##` piece (0.2% of NotNext
    # Bs), which gave the label away. Long sentences' pieces were cut the same way.
    lines = (data_dir / "pretrain_en/wikitext103_raw_test.txt").read_text(encoding="utf-8").splitlines()
    sentences = [x.strip() for x in lines if 40 < len(x.strip()) < 300 and not x.startswith(" =")][:1500]
    corpus = tmp_path / "one_sentence_documents.txt"
    one_long_sentence = " ".join(sentences[:60]).translate(str.maketrans("", "", ".!?"))  # cut into pieces
    corpus.write_text("\n\n".join([*sentences, one_long_sentence]) + "\n", encoding="utf-8")
    Tokenizer.train([corpus], vocab_size=800, show_progress=False).save_pretrained(tmp_path / "tok")
    m = prepare([corpus], tmp_path / "tok", tmp_path / "out", PrepareConfig(eval_fraction=0), progress=False)
    assert m["sentences_cut"] >= 1
    data = PretrainingData(tmp_path / "out")
    piece = np.array([t.startswith("##") for t in data.tokenizer.vocab])
    tokens, index = data.shards[0][0].astype(np.int64), data.shards[0][1]
    b_starts_with_piece = piece[tokens[index[:, 0] + index[:, 1]]]
    is_next = index[:, 3] == 0
    assert is_next.sum() > 500 and 0.4 < 1 - is_next.mean() < 0.6
    # Only truncation (a random end of the longer side, as the original trims) still cuts inside a word: rarely.
    assert b_starts_with_piece[is_next].mean() < 0.01


def test_a_document_as_long_as_a_block_still_gets_notnext_pairs(tmp_path: Path, zh_corpus, zh_tokenizer) -> None:
    # A document of a block's size or more that began a block was alone in it: none of its pairs could take a
    # random B (share NotNext 0.24 on a real corpus), and a short remainder after the last block made one alone too.
    lines = [x for x in Path(zh_corpus[0]).read_text(encoding="utf-8").splitlines() if x.strip()]
    big, small = "".join(lines[:300]), lines[300:340]
    for name, docs in {"big_first": [big, *small], "big_last": [*small, big]}.items():
        corpus = tmp_path / f"{name}.txt"
        corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        cfg = PrepareConfig(eval_fraction=0, block_chars=len(big) // 3)
        m = prepare([corpus], zh_tokenizer, tmp_path / name, cfg, progress=False)
        assert 0.4 < m["splits"]["train"]["nsp_random_fraction"] < 0.6, name


def test_instances_are_indexed_as_a_sequence_is(zh_data: Path) -> None:
    data = PretrainingData(zh_data)
    last = data[len(data) - 1]
    assert all(np.array_equal(data[-1][k], last[k]) for k in last)  # was: out of bounds for index -352
    for bad, error in ((len(data), IndexError), (-len(data) - 1, IndexError), (1.5, TypeError)):
        with pytest.raises(error, match=r"out of range|whole numbers"):
            data[bad]
    with pytest.raises(BertkitError, match="seed must be a whole number of 0 or more, got -1"):
        PretrainingData(zh_data, seed=-1)  # was numpy's ValueError at the first instance
    with pytest.raises(BertkitError, match="masking must be a MaskingConfig, got dict"):
        PretrainingData(zh_data, masking={"mask_prob": 0.2})  # type: ignore[arg-type]
