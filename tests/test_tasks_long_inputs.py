"""Inputs longer than --max-seq-length (`--long-inputs window`): an input that fits gives exactly today's features
and answers; a long one is read in windows that cover every token; classification averages the windows' logits;
NER tags every word exactly once, from the window where it has the most context. Real text throughout: ChnSentiCorp
reviews, AFQMC pairs, CLUENER sentences."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from realdata import tsv_rows

from bertkit import Tokenizer
from bertkit.data.task_files import TextExample, read_conll
from bertkit.tasks.base import run_model, window_starts
from bertkit.tasks.classify import ClassificationTask, PairClassificationTask
from bertkit.tasks.model_dir import open_task_model
from bertkit.tasks.ner import NerTask
from bertkit.tasks.settings import TaskSettings


@pytest.fixture(scope="module")
def reviews(data_dir: Path) -> list[str]:
    return [r["text"] for r in tsv_rows(data_dir / "chnsenticorp/dev.tsv")[:60]]


@pytest.fixture(scope="module")
def tok(tiny_zh_pretrained: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(tiny_zh_pretrained)


def windowed(task_class, length: int, stride: int | None = None):
    return task_class(TaskSettings(max_seq_length=length, long_inputs="window", window_stride=stride))


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(n=st.integers(0, 300), size=st.integers(1, 40), stride=st.integers(1, 60))
def test_window_starts_cover_every_position(n: int, size: int, stride: int) -> None:
    starts = window_starts(n, size, min(stride, size))
    covered = {p for s in starts for p in range(s, min(s + size, n))}
    assert covered == set(range(n)) and starts[0] == 0 and starts == sorted(set(starts))
    assert max(starts) + size >= n and all(s + size <= max(n, size) for s in starts)


@settings(max_examples=30, derandomize=True, deadline=None, database=None)
@given(data=st.data())
def test_classification_windows(data, reviews: list[str], tok: Tokenizer) -> None:
    texts = data.draw(st.lists(st.sampled_from(reviews), min_size=1, max_size=6))
    length = data.draw(st.integers(12, 96))
    stride = data.draw(st.one_of(st.none(), st.integers(1, 200)))
    examples = [TextExample(t, None, "0", i + 1) for i, t in enumerate(texts)]
    label2id = {"0": 0, "1": 1}
    cut = ClassificationTask(TaskSettings(max_seq_length=length)).features(examples, tok, label2id, train=True)
    task = windowed(ClassificationTask, length, stride)
    win = task.features(examples, tok, label2id, train=True)
    full = tok.encode_batch(texts, max_length=10_000)
    assert task.cut_inputs == sum(len(e) > length for e in full)
    for i, enc in enumerate(full):
        mine = [f for f in win if f["example"] == i]
        if len(enc) <= length:  # fits: exactly today's feature
            (today,) = [f for f in cut if f["example"] == i]
            assert mine == [today] and today["input_ids"] == enc.input_ids
            continue
        (today,) = [f for f in cut if f["example"] == i]  # truncated as the tokenizer truncates
        assert today["input_ids"] == tok.encode(texts[i], max_length=length).input_ids
        body = enc.input_ids[1:-1]
        assert len(mine) >= 2 and all(len(f["input_ids"]) <= length and f["label"] == 0 for f in mine)
        parts = [f["input_ids"][1:-1] for f in mine]
        assert all(f["input_ids"][0] == tok.cls_id and f["input_ids"][-1] == tok.sep_id for f in mine)
        # every window is a run of the text's tokens, in order, and together they cover all of them
        starts = [next(s for s in range(len(body)) if body[s : s + len(p)] == p) for p in parts]
        covered = {s + k for s, p in zip(starts, parts, strict=True) for k in range(len(p))}
        assert covered == set(range(len(body))) and starts == sorted(starts)


def test_pair_windows_keep_the_shorter_text_whole(data_dir: Path, reviews: list[str], tok: Tokenizer) -> None:
    question = tsv_rows(data_dir / "afqmc/dev.tsv")[0]["text_a"]
    long_text = max(reviews, key=len)
    task = windowed(PairClassificationTask, 48)
    for a, b in ((question, long_text), (long_text, question)):
        features = task.features([TextExample(a, b, None, 1)], tok, None, train=False)
        (cut,) = PairClassificationTask(TaskSettings(max_seq_length=48)).features([TextExample(a, b, None, 1)], tok,
                                                                                  None, train=False)  # fmt: skip
        want = tok.encode(a, b, max_length=48)
        assert (cut["input_ids"], cut["token_type_ids"]) == (want.input_ids, want.token_type_ids)
        short = tok.encode(question).input_ids[1:-1]
        assert len(features) >= 2
        for f in features:
            ids, types = f["input_ids"], f["token_type_ids"]
            n_a = types.count(0) - 2
            seg_a, seg_b = ids[1 : 1 + n_a], ids[2 + n_a : -1]
            assert len(ids) <= 48 and len(types) == len(ids) and (seg_a if a == question else seg_b) == short


def test_classifier_averages_window_logits_and_fitting_inputs_answer_as_before(
    tiny_task_models: dict[str, Path], reviews: list[str]
) -> None:
    opened = open_task_model(tiny_task_models["cls"], "cpu")
    model, tok = opened.model, opened.tokenizer
    examples = [TextExample(t, None, None, i + 1) for i, t in enumerate(reviews[:12])]
    fit = [ex for ex, enc in zip(examples, tok.encode_batch(reviews[:12], max_length=10_000), strict=True)
           if len(enc) <= 128]  # fmt: skip
    assert 0 < len(fit) < len(examples)
    window = dataclasses.replace(opened, task=ClassificationTask(TaskSettings(long_inputs="window")))
    assert window.predict(fit) == opened.predict(fit)  # same features, same batches: the same floats
    # Truncated, an answer says so (the server answered two texts that differ past the cut alike, with no word);
    # read in windows, nothing is cut.
    cut = {i for i, row in enumerate(opened.predict(examples)) if row.pop("truncated", False)}
    assert cut == {i for i, ex in enumerate(examples) if ex not in fit}
    assert not any("truncated" in row for row in window.predict(examples))
    short = dataclasses.replace(opened, task=windowed(ClassificationTask, 24))
    features = short.features(examples)
    per_window = run_model(model, short.task, features, tok.pad_id)
    got = short.task._scores(short.inference(), features)
    for i in range(len(examples)):
        mine = torch.stack([lg for lg, f in zip(per_window, features, strict=True) if f["example"] == i])
        assert torch.allclose(got[i], mine.mean(0), atol=1e-6)  # the same floats summed in another order
    assert len(features) > len(examples)


def test_ner_windows_tag_every_word_once_from_its_most_central_window(
    tiny_task_models: dict[str, Path], data_dir: Path
) -> None:
    opened = open_task_model(tiny_task_models["ner"], "cpu")
    sentences = [s for s in read_conll(data_dir / "cluener2020/dev.txt")[:40] if len(s.tokens) > 30][:8]
    for s in sentences:
        s.tags = None
    before = opened.predict(sentences)
    assert dataclasses.replace(opened, task=NerTask(TaskSettings(long_inputs="window"))).predict(sentences) == before
    task = windowed(NerTask, 16, 5)
    features = task.features(sentences, opened.tokenizer, None, train=False)
    assert task.cut_inputs == len(sentences)
    for n, s in enumerate(sentences):
        mine = [f for f in features if f["example"] == n]
        seen = [w for f in mine for w in f["word_index"]]
        assert set(seen) == set(range(len(s.tokens))) and len(set(seen)) < len(seen)  # all words, some twice
        for f in mine:
            assert len(f["input_ids"]) <= 16
            assert f["context"] == [min(p - 1, len(f["input_ids"]) - 2 - p) for p in f["first_pos"]]
    logits = run_model(opened.model, task, features, opened.tokenizer.pad_id)
    tags, _ = task._tags(opened.inference(), sentences, features)
    for n, s in enumerate(sentences):
        assert len(tags[n]) == len(s.tokens)
        for w in range(len(s.tokens)):  # brute force: the first window with the most context decides
            where = [(f["context"][k], -i, i, k) for i, f in enumerate(features) if f["example"] == n
                     for k, x in enumerate(f["word_index"]) if x == w]  # fmt: skip
            _, _, i, k = max(where)
            assert tags[n][w] == opened.id2label[int(logits[i][features[i]["first_pos"][k]].argmax())]


def test_finetuning_says_how_many_inputs_were_cut(tiny_zh_pretrained: Path, data_dir: Path, tmp_path: Path) -> None:
    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.recipes.finetune import run_finetune

    train = tmp_path / "train.tsv"
    train.write_text("\n".join((data_dir / "chnsenticorp/train.tsv").read_text().splitlines()[:41]) + "\n")
    n_long = sum(len(e) > 32 for e in Tokenizer.from_pretrained(tiny_zh_pretrained).encode_batch(
        [r["text"] for r in tsv_rows(train)], max_length=10_000))  # fmt: skip
    assert 0 < n_long < 40
    for mode, fate in (("truncate", "truncated (--long-inputs window"), ("window", "read in overlapping windows")):
        cfg = FinetuneConfig(task="cls", model=str(tiny_zh_pretrained), train_file=str(train), out=str(tmp_path / mode),
                             train=finetune_training(max_steps=1, progress=False), save_model=False,
                             settings=TaskSettings(max_seq_length=32, long_inputs=mode))  # fmt: skip
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = run_finetune(cfg)
        assert f"note: {n_long} of 40 inputs in {train} are longer than max_seq_length 32 tokens: {fate}" in (
            printed.getvalue()
        )
        assert (result["train_features"] > 40) == (mode == "window")  # windows: more features than examples
