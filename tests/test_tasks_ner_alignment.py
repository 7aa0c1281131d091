"""Where labels sit and which answer wins, on English data where a word is several tokens: a NER word's label on
its first word piece (as transformers' run_ner example labels words), the first of the windows that give a word
the most context tags it, and classification labels in (length, text) order so that "9" comes before "10".
WikiANN English sentences and the MiniLM checkpoint's WordPiece vocabulary."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bertkit import Tokenizer
from bertkit.constants import IGNORE_INDEX
from bertkit.data.task_files import TaggedSentence, TextExample, read_conll
from bertkit.tasks.base import Inference
from bertkit.tasks.classify import ClassificationTask, PairClassificationTask
from bertkit.tasks.ner import NerTask
from bertkit.tasks.settings import TaskSettings


@pytest.fixture(scope="module")
def wikiann(data_dir: Path) -> list[TaggedSentence]:
    return read_conll(data_dir / "wikiann_en/dev.txt")


@pytest.fixture(scope="module")
def en_tok(minilm_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(minilm_dir)


def test_a_words_label_sits_on_its_first_word_piece(
    wikiann: list[TaggedSentence], en_tok: Tokenizer, minilm_dir: Path
) -> None:
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast.from_pretrained(minilm_dir)
    examples = wikiann[:400]
    task = NerTask()
    label2id = {t: i for i, t in enumerate(task.labels(examples))}
    features = task.features(examples, en_tok, label2id, train=True)
    assert [f["example"] for f in features] == list(range(len(examples)))  # short sentences: one chunk each
    split_words = 0
    for ex, f in zip(examples, features, strict=True):
        enc = hf(ex.tokens, is_split_into_words=True)
        word_ids = enc.word_ids()
        # run_ner's rule (label_all_tokens=False): the first token of each word's run carries its label, the
        # word's other pieces and the special tokens are ignored.
        first = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
        want = [IGNORE_INDEX] * len(word_ids)
        for i in first:
            want[i] = label2id[ex.tags[word_ids[i]]]
        assert f["input_ids"] == enc["input_ids"]
        assert f["first_pos"] == first and f["word_index"] == [word_ids[i] for i in first]
        assert f["token_labels"] == want
        split_words += sum(word_ids.count(w) > 1 for w in set(word_ids) - {None})
    assert split_words > 200  # many words of several pieces, where first and last differ


class WindowStub(nn.Module):
    """A tagger whose every token in window `i` of a sentence scores tag `i` highest: the tag a word gets names
    the window it was read from. Windows are recognised by their token ids."""

    def __init__(self, features: list[dict]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # run_model reads the device from the parameters
        self.rank: dict[tuple[int, ...], int] = {}
        seen: dict[int, int] = {}
        for f in features:
            key = tuple(f["input_ids"])
            assert key not in self.rank  # distinct windows, so the lookup names one
            self.rank[key] = seen.get(f["example"], 0)
            seen[f["example"]] = self.rank[key] + 1
        self.num_tags = max(seen.values())

    def forward(self, input_ids, attention_mask, **_) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.num_tags)
        for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist(), strict=True)):
            logits[row, :, self.rank[tuple(ids[: sum(mask)])]] = 1.0
        return SimpleNamespace(logits=logits)


def test_the_first_window_with_the_most_context_tags_a_word(wikiann: list[TaggedSentence], en_tok: Tokenizer) -> None:
    sentences = sorted(wikiann[:2000], key=lambda s: -sum(len(p) for p in en_tok.encode_words([s.tokens])[0]))[:20]
    task = NerTask(TaskSettings(max_seq_length=16, long_inputs="window", window_stride=5))
    features = task.features(sentences, en_tok, None, train=False)
    assert task.cut_inputs == len(sentences)
    model = WindowStub(features)
    run = Inference(model, en_tok, {i: f"window{i}" for i in range(model.num_tags)}, batch_size=4)
    tags, _ = task._tags(run, sentences, features)
    ties = 0
    for n, s in enumerate(sentences):
        windows = [f for f in features if f["example"] == n]
        for w in range(len(s.tokens)):
            # brute force: the context each window gives word w; the first of the best decides
            context = [f["context"][f["word_index"].index(w)] if w in f["word_index"] else -1 for f in windows]
            best = max(context)
            ties += context.count(best) > 1
            assert tags[n][w] == f"window{context.index(best)}"
    assert ties > 20  # words where a later window gives as much context as the first: the rule decides them


@pytest.mark.parametrize("task_class", [ClassificationTask, PairClassificationTask])
def test_number_labels_are_ordered_by_length_then_text(task_class) -> None:
    # "10" after "9", as the numbers go (plain string order would put "10" before "2")
    examples = [TextExample("text", "other" if task_class.pair else None, label, n) for n, label in
                enumerate(["10", "9", "2", "9"])]  # fmt: skip
    assert task_class().labels(examples) == ["2", "9", "10"]
