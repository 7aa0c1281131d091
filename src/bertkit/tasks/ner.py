"""Token labelling (NER): a label per word, predicted at its first sub-token; BIO/BIOES entities decoded with the
usual repairs. Chinese data is character level and works as it is."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from bertkit.constants import IGNORE_INDEX
from bertkit.data.task_files import TaggedSentence, numbered_lines, read_conll
from bertkit.errors import BertkitError
from bertkit.metrics import entity_prf, entity_spans
from bertkit.model import BertForTokenClassification
from bertkit.tasks.base import Feature, Task, run_model, text_field
from bertkit.tokenizer import Tokenizer, contains_cjk


def words_of(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into the units a tagger labels: characters for Chinese, white-space words otherwise."""
    if contains_cjk(text, bmp_only=True):
        spans = [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]
    else:
        spans = [m.span() for m in re.finditer(r"\S+", text)]
    return [text[s:e] for s, e in spans], spans


def _sentence(text: str, n: int) -> TaggedSentence:
    """An unlabelled sentence from raw text, keeping the text and word spans that `predict` maps entities back to."""
    words, spans = words_of(text)
    sent = TaggedSentence(words, None, n)
    sent.text, sent.spans = text, spans  # type: ignore[attr-defined]
    return sent


class NerTask(Task):
    """Token labelling (`ner`): a BIO/BIOES tag per word, predicted at the word's first sub-token."""

    name = "ner"
    main_metric = "f1"
    model_class = BertForTokenClassification
    head = "tags"
    input_schema = '{"text": "..."}'
    export_kind = "tagger"
    per_token = True

    def read(self, path: str | Path, labelled: bool = True) -> list[TaggedSentence]:
        """CoNLL when labelled; else text lines split by `words_of`, character spans kept for `predict`."""
        if labelled:
            return read_conll(path, require_tags=True)
        return [_sentence(line, n) for n, line in numbered_lines(path) if line.strip()]

    def read_for_prediction(self, path: str | Path) -> list[TaggedSentence]:
        """Text lines; a CoNLL file (.conll, .bio, .bioes) is read as one, its tags left aside."""
        return self.read(path, labelled=Path(path).suffix.lower() in (".conll", ".bio", ".bioes"))

    def echo(self, example: TaggedSentence) -> dict:
        """The line number and the text that the entities' start and end point into."""
        return {"line": example.line, "text": getattr(example, "text", " ".join(example.tokens))}

    def from_json(self, row: dict, n: int = 0) -> TaggedSentence:
        """{"text"}: raw text, split as `words_of` splits it."""
        return _sentence(text_field(row, "text"), n)

    def labels(self, examples: Sequence[TaggedSentence]) -> list[str]:
        """'O' first, then the tags sorted by entity type and then prefix."""
        tags = {t for ex in examples for t in (ex.tags or [])}
        return ["O", *sorted(tags - {"O"}, key=lambda t: (t[2:], t[0]))]

    def check_labels(self, examples: Sequence[TaggedSentence], label2id: dict[str, int], path) -> None:
        for ex in examples:
            for k, t in enumerate(ex.tags or []):
                if t not in label2id:
                    raise BertkitError(f"{path}:{ex.line + k}: label {t!r} was not in the training data")

    def features(self, examples, tok: Tokenizer, label2id, train: bool) -> list[Feature]:
        """Chunks of whole words up to `max_seq_length`; a word's label sits on its first sub-token only."""
        budget = self.settings.max_seq_length - 2
        pieces_per_sentence = tok.encode_words([ex.tokens for ex in examples])  # grouped per word: never split one
        out: list[Feature] = []
        for s, (ex, per_word) in enumerate(zip(examples, pieces_per_sentence, strict=True)):
            start = 0
            while start < len(per_word):
                ids, labels, first_pos, words = [tok.cls_id], [IGNORE_INDEX], [], []
                w = start
                while w < len(per_word) and (len(ids) - 1 + len(per_word[w]) <= budget or w == start):
                    pieces = per_word[w][:budget]
                    if pieces:
                        first_pos.append(len(ids))
                        words.append(w)
                        tag = ex.tags[w] if ex.tags is not None else None
                        labels += [label2id[tag] if (tag is not None and label2id) else IGNORE_INDEX]
                        labels += [IGNORE_INDEX] * (len(pieces) - 1)
                        ids += pieces
                    w += 1
                ids.append(tok.sep_id)
                labels.append(IGNORE_INDEX)
                f: Feature = {"input_ids": ids, "token_type_ids": [0] * len(ids), "sentence": s}
                f.update(word_index=words, first_pos=first_pos)
                if ex.tags is not None and label2id:
                    f["token_labels"] = labels
                out.append(f)
                start = w
        return out

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "token_type_ids", "attention_mask", "labels")
        return {k: batch[k] for k in keys if k in batch}

    def _tags(self, model, tok, examples, features, id2label) -> tuple[list[list[str]], list[list[float]]]:
        """Each word's tag (the best at its first sub-token) and that tag's probability."""
        logits = run_model(model, self, features, tok.pad_id)
        tags = [["O"] * len(ex.tokens) for ex in examples]  # words with no sub-token stay O
        probs = [[1.0] * len(ex.tokens) for ex in examples]
        for f, lg in zip(features, logits, strict=True):
            best_p, best = lg.float().softmax(-1).max(-1)
            best, best_p = best.tolist(), best_p.tolist()
            for w, p in zip(f["word_index"], f["first_pos"], strict=True):
                tags[f["sentence"]][w] = id2label[best[p]]
                probs[f["sentence"]][w] = best_p[p]
        return tags, probs

    def evaluate(self, model, tok, examples, features, id2label) -> dict:
        """Entity-level precision, recall and F1 (conlleval chunking) of the tags at first sub-tokens."""
        pred, _ = self._tags(model, tok, examples, features, id2label)
        gold = [ex.tags for ex in examples]
        return {**entity_prf(pred, gold), "sentences": len(gold)}

    def predict(self, model, tok, examples, features, id2label) -> list[dict]:
        """Per sentence: its word tags and its entities (type, character start and end, text, and a score: the mean
        probability of the entity's word tags, as transformers' token-classification pipeline scores one)."""
        pred, probs = self._tags(model, tok, examples, features, id2label)
        out = []
        for ex, tags, p in zip(examples, pred, probs, strict=True):
            text = getattr(ex, "text", " ".join(ex.tokens))
            spans = getattr(ex, "spans", None)
            if spans is None:  # CoNLL input: rebuild offsets in the space-joined text
                spans, pos = [], 0
                for w in ex.tokens:
                    spans.append((pos, pos + len(w)))
                    pos += len(w) + 1
            ents = []
            for kind, a, b in entity_spans(tags):
                start, end = spans[a][0], spans[b][1]
                score = sum(p[a : b + 1]) / (b + 1 - a)
                ents.append({"type": kind, "start": start, "end": end, "text": text[start:end], "score": score})
            out.append({"tags": tags, "entities": ents})
        return out
