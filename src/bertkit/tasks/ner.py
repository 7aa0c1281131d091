"""Token labelling (NER): a label per word, predicted at its first sub-token; BIO/BIOES entities decoded with the
usual repairs. Chinese data is character level and works as it is."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch

from bertkit.constants import IGNORE_INDEX, INFERENCE_BATCH_SIZE
from bertkit.crf import CRF
from bertkit.data.task_files import TaggedSentence, looks_like_conll, numbered_lines, read_conll
from bertkit.errors import BertkitError
from bertkit.metrics import entity_prf, entity_spans, span_tags
from bertkit.model import BertForTokenClassification
from bertkit.tasks.base import Feature, Inference, Task, text_field, unseen_label, with_marks
from bertkit.tokenizer import Tokenizer, contains_cjk, is_cjk


def words_of(text: str, char_words: bool | None = None) -> tuple[list[str], list[tuple[int, int]]]:
    """Split raw text into the units a tagger labels, as its training data had them (`TaskSettings.char_words`):
    every character (Chinese data tags each one, Latin letters too), or white-space words with each CJK character
    a word of its own; None (not known): characters when the text holds Chinese, else white-space words."""
    if char_words is None:
        char_words = contains_cjk(text, bmp_only=True)
    if char_words:  # a combining mark belongs to the character before it ("e" + U+0301 is one "é")
        spans = []
        for i, ch in enumerate(text):
            if not ch.isspace() and not (spans and i < spans[-1][1]):
                spans.append((i, with_marks(text, i + 1)))
    else:
        spans = [span for m in re.finditer(r"\S+", text) for span in _word_spans(text, m.start(), m.end())]
    return [text[s:e] for s, e in spans], spans


def _word_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The words of one white-space run as tagged corpora (CoNLL, WikiANN) write them: punctuation before and after
    it a word of its own ("(Seattle)." -> "(", "Seattle", ")", "."), except the final stop of an abbreviation
    ("U.S."), and each CJK character a word; punctuation inside a word stays ("O'Neil", "3.5")."""
    lead, tail = [], []
    while start < end and _is_punct(text[start]):
        stop = start + 1
        while stop < end and text[stop] == text[start]:  # a run of one mark ("((") is one word
            stop += 1
        lead.append((start, stop))
        start = stop
    while end > start and _is_punct(text[end - 1]):
        first = end - 1
        while first > start and text[first - 1] == text[end - 1]:  # "..." is one word
            first -= 1
        if text[end - 1] == "." and end - first == 1 and "." in text[start:first]:
            break  # the stop of an abbreviation
        tail.append((first, end))
        end = first
    middle, piece = [], start
    for i in range(start, end):
        if is_cjk(text[i]):
            middle += [(piece, i)] if piece < i else []
            middle.append((i, i + 1))
            piece = i + 1
    middle += [(piece, end)] if piece < end else []
    return [*lead, *middle, *tail[::-1]]


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def text_and_spans(sentence: TaggedSentence) -> tuple[str, list[tuple[int, int]]]:
    """The text a prediction's entities point into, and each word's (start, end) in it: raw text as given, or a
    CoNLL sentence's words joined with a space where both sides are not CJK ("新华社", "New York", "2026年")."""
    if hasattr(sentence, "text"):
        return sentence.text, sentence.spans  # type: ignore[attr-defined]
    text, spans = "", []
    for w in sentence.tokens:
        if text and not (is_cjk(text[-1]) or is_cjk(w[0])):
            text += " "
        spans.append((len(text), len(text) + len(w)))
        text += w
    return text, spans


def _sentence(text: str, n: int, char_words: bool | None) -> TaggedSentence:
    """An unlabelled sentence from raw text, keeping the text and word spans that `predict` maps entities back to."""
    words, spans = words_of(text, char_words)
    sent = TaggedSentence(words, None, n)
    sent.text, sent.spans = text, spans  # type: ignore[attr-defined]
    return sent


# Training tokens of one character, at least this share of them: the data was tagged character by character (in an
# English corpus they are a minority, punctuation and "a"; in a Chinese one nearly all, a few Latin words aside).
CHAR_WORDS_SHARE = 0.9


class NerTask(Task):
    """Token labelling (`ner`): a BIO/BIOES tag per word, predicted at the word's first sub-token."""

    name = "ner"
    main_metric = "f1"
    curve_scores = ("f1", "precision", "recall")
    model_class = BertForTokenClassification
    head = "tags"
    example_class = TaggedSentence
    input_schema = '{"text": "..."}'
    export_kind = "tagger"
    per_token = True
    truncated = "cut into consecutive chunks (--long-inputs window overlaps them)"

    def is_labelled(self, example: TaggedSentence) -> bool:
        """Whether the sentence has its tags."""
        return example.tags is not None

    def model_config(self) -> dict:
        """{"crf": true} for a model with a CRF (`--crf`)."""
        return {"crf": True} if self.settings.crf else {}

    def read(self, path: str | Path, labelled: bool = True) -> list[TaggedSentence]:
        """CoNLL when labelled; else text lines split by `words_of`, character spans kept for `predict`."""
        if labelled:
            return read_conll(path, require_tags=True)
        lines = [(n, line) for n, line in numbered_lines(path) if line.strip()]
        for n, line in lines:
            if "\t" in line:  # e.g. a classification file's text<TAB>label rows: tagged as text, they came back tagged
                raise BertkitError(
                    f"{path}:{n}: a tab; this ner model reads one text per line (or a CoNLL file: a token and its "
                    "tag per line, sentences apart)"
                )
        return [_sentence(line, n, self.settings.char_words) for n, line in lines]

    def read_for_prediction(self, path: str | Path) -> list[TaggedSentence]:
        """Text lines; a CoNLL file (.conll, .bio, .bioes, or any name laid out as one, as fine-tuning reads it) is
        read as one, its tags left aside."""
        conll = Path(path).suffix.lower() in (".conll", ".bio", ".bioes") or looks_like_conll(path)
        return self.read(path, labelled=conll)

    def echo(self, example: TaggedSentence) -> dict:
        """The line number and the text that the entities' start and end point into."""
        return {"line": example.line, "text": text_and_spans(example)[0]}

    def from_json(self, row: dict, n: int = 0) -> TaggedSentence:
        """{"text"}: raw text, split as `words_of` splits it."""
        return _sentence(text_field(row, "text"), n, self.settings.char_words)

    def labels(self, examples: Sequence[TaggedSentence]) -> list[str]:
        """'O' first, then the tags sorted by entity type and then prefix. Also settles, from these training
        sentences, how raw text is cut into words for this model: characters when (nearly) every training token is
        one character, as in Chinese data."""
        tokens = [t for ex in examples for t in ex.tokens]
        self.settings.char_words = bool(tokens) and sum(len(t) == 1 for t in tokens) >= CHAR_WORDS_SHARE * len(tokens)
        tags = {t for ex in examples for t in (ex.tags or [])}
        return ["O", *sorted(tags - {"O"}, key=lambda t: (t[2:], t[0]))]

    def check_labels(self, examples: Sequence[TaggedSentence], label2id: dict[str, int], path: str | Path) -> None:
        for ex in examples:
            for k, t in enumerate(ex.tags or []):
                if t not in label2id:
                    raise unseen_label(f"{path}:{ex.line + k}", t)

    def features(
        self, examples: Sequence[TaggedSentence], tok: Tokenizer, label2id: dict[str, int] | None, train: bool
    ) -> list[Feature]:
        """Chunks of whole words up to `max_seq_length`; a word's label sits on its first sub-token only.

        A sentence longer than that is cut into consecutive chunks, or (`long_inputs="window"`) read in overlapping
        windows `window_stride` tokens apart, each word then tagged from the window where it has the most context
        (`context`: the tokens beside it on its shorter side). `cut_inputs` says afterwards how many were longer."""
        budget = self.settings.max_seq_length - 2
        overlap = self.settings.long_inputs == "window"
        stride = self.window_stride(budget)
        pieces_per_sentence = tok.encode_words([ex.tokens for ex in examples])  # grouped per word: never split one
        bioes = bool(label2id) and any(t[:2] in ("E-", "S-") for t in label2id)
        self.cut_inputs = 0
        out: list[Feature] = []
        for s, (ex, per_word) in enumerate(zip(examples, pieces_per_sentence, strict=True)):
            self.cut_inputs += sum(len(p[:budget]) for p in per_word) > budget
            # Training chunks end before an entity that would not fit, so that no entity is cut in two (in BIOES a
            # cut entity has no valid tags). Evaluation and prediction cut where the tokens end: their chunks may
            # not depend on the gold tags.
            entity_from = _entity_starts(ex.tags) if train and ex.tags is not None and not overlap else None
            start = 0
            while start < len(per_word):
                ids, first_pos, words = [tok.cls_id], [], []
                w = start
                while w < len(per_word) and (len(ids) - 1 + len(per_word[w]) <= budget or w == start):
                    pieces = per_word[w][:budget]
                    if pieces:
                        first_pos.append(len(ids))
                        words.append(w)
                        ids += pieces
                    w += 1
                if entity_from is not None and w < len(per_word) and start < entity_from[w] < w:
                    w = entity_from[w]  # the entity that word w continues starts the next chunk
                    keep = sum(v < w for v in words)
                    ids = ids[: first_pos[keep]] if keep < len(words) else ids
                    first_pos, words = first_pos[:keep], words[:keep]
                ids.append(tok.sep_id)
                f: Feature = {"input_ids": ids, "token_type_ids": [0] * len(ids), "example": s}
                f.update(
                    word_index=words, first_pos=first_pos, context=[min(p - 1, len(ids) - 2 - p) for p in first_pos]
                )
                if ex.tags is not None and label2id:
                    tags = [ex.tags[i] for i in words]
                    if self.settings.crf:  # the chain of this chunk must be a valid sequence (see `_chain_tags`)
                        cut = (bool(words) and words[0] > 0, bool(words) and words[-1] < len(ex.tags) - 1)
                        tags = _chain_tags(tags, bioes, label2id, ex, cut)
                    labels = [IGNORE_INDEX] * len(ids)
                    for p, tag in zip(first_pos, tags, strict=True):
                        labels[p] = label2id[tag]
                    f["token_labels"] = labels
                out.append(f)
                if overlap and w < len(per_word):  # the next window starts `stride` tokens on, at a word's start
                    ahead = [v for v, p in zip(words, first_pos, strict=True) if p - first_pos[0] >= stride]
                    w = ahead[0] if ahead and ahead[0] > start else w
                start = w
        return out

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "token_type_ids", "attention_mask", "labels")
        return {k: batch[k] for k in keys if k in batch}

    def _tags(
        self, run: Inference, examples: Sequence[TaggedSentence], features: list[Feature]
    ) -> tuple[list[list[str]], list[list[float]]]:
        """Each word's tag and that tag's probability: the best tag at the word's first sub-token; with a CRF, the
        best valid sequence (Viterbi) and each tag's marginal probability under the CRF."""
        logits = run.logits(self, features)
        crf = getattr(run.model, "crf", None)
        tags = [["O"] * len(ex.tokens) for ex in examples]  # words with no sub-token stay O
        probs = [[1.0] * len(ex.tokens) for ex in examples]
        context: dict[tuple[int, int], int] = {}  # (sentence, word) -> the context of the window it was read from
        for f, (best, best_p) in zip(features, _decode(crf, features, logits, run.batch_size), strict=True):
            for w, tag, p, c in zip(f["word_index"], best, best_p, f["context"], strict=True):
                if context.get((f["example"], w), -1) >= c:  # an earlier window gave this word more context
                    continue
                context[f["example"], w] = c
                tags[f["example"]][w] = run.id2label[tag]
                probs[f["example"]][w] = p
        return tags, probs

    def evaluate(self, run: Inference, examples: Sequence[TaggedSentence], features: list[Feature]) -> dict:
        """Entity-level precision, recall and F1 (conlleval chunking) of the tags at first sub-tokens."""
        pred, _ = self._tags(run, examples, features)
        gold = [ex.tags for ex in examples]
        return {**entity_prf(pred, gold), "sentences": len(gold)}

    def predict(self, run: Inference, examples: Sequence[TaggedSentence], features: list[Feature]) -> list[dict]:
        """Per sentence: its word tags and its entities (type, character start and end, text, and a score: the mean
        probability of the entity's word tags, as transformers' token-classification pipeline scores one)."""
        pred, probs = self._tags(run, examples, features)
        out = []
        for ex, tags, p in zip(examples, pred, probs, strict=True):
            text, spans = text_and_spans(ex)
            ents = []
            for kind, a, b in entity_spans(tags):
                start, end = spans[a][0], spans[b][1]
                score = sum(p[a : b + 1]) / (b + 1 - a)
                ents.append({"type": kind, "start": start, "end": end, "text": text[start:end], "score": score})
            out.append({"tags": tags, "entities": ents})
        return out


def _entity_starts(tags: Sequence[str]) -> list[int]:
    """For each word, the first word of the entity it belongs to (itself outside any entity)."""
    first = list(range(len(tags)))
    for _, a, b in entity_spans(tags):
        first[a : b + 1] = [a] * (b + 1 - a)
    return first


def _chain_tags(
    tags: list[str], bioes: bool, label2id: dict[str, int], ex: TaggedSentence, cut: tuple[bool, bool]
) -> list[str]:
    """The tags a CRF trains on: the entities that the entity metric reads in `tags`, written as a valid sequence
    (a CRF cannot produce an I- tag that continues no entity, found in real data and at the start of the second
    chunk of a long sentence: such a tag opens an entity, as conlleval reads it). `cut` says whether the chunk's
    sentence goes on before and after it: the piece of an entity cut there that needs a tag the data never uses
    (in BIOES, a lone B- becomes S-) is tagged O in this chunk rather than refused."""
    spans = entity_spans(tags)
    valid = span_tags(spans, len(tags), bioes)
    missing = next((t for t in valid if t not in label2id), None)
    if missing is not None:
        at_a_cut = [(cut[0] and a == 0) or (cut[1] and b == len(tags) - 1) for _, a, b in spans]
        unknown = [any(t not in label2id for t in span_tags([span], len(tags), bioes)) for span in spans]
        valid = span_tags([sp for sp, c, u in zip(spans, at_a_cut, unknown, strict=True) if not (c and u)], len(tags),
                          bioes)  # fmt: skip
        missing = next((t for t in valid if t not in label2id), None)
    if missing is not None:
        where = f"{ex.path}:{ex.line}" if ex.path else f"line {ex.line}"
        raise BertkitError(
            f"{where}: the entities of this sentence need the tag {missing!r}, which the training data never uses; a "
            "CRF needs it for a valid tag sequence (train without --crf, or correct the tags)"
        )
    return valid


def _decode(
    crf: CRF | None, features: list[Feature], logits: list[torch.Tensor], batch_size: int = INFERENCE_BATCH_SIZE
) -> list[tuple[list[int], list[float]]]:
    """(tag ids, probabilities) at each feature's first sub-tokens: the argmax of the softmax, or with a CRF the
    Viterbi path and the CRF's marginal probability of each of its tags (the gradient of log Z with respect to the
    emissions), in batches of rows padded to the longest."""
    if crf is None:
        out = []
        for f, lg in zip(features, logits, strict=True):
            best_p, best = lg[f["first_pos"]].float().softmax(-1).max(-1)
            out.append((best.tolist(), best_p.tolist()))
        return out
    out = []
    device = crf.transitions.device
    # Outside any inference mode of the caller: the marginals are a gradient, so these tensors must record one.
    with torch.inference_mode(False), torch.enable_grad():
        for s in range(0, len(features), batch_size):
            rows = list(range(s, min(s + batch_size, len(features))))
            T = max(len(logits[i]) for i in rows)
            emissions = torch.zeros(len(rows), T, crf.num_tags, device=device)
            mask = torch.zeros(len(rows), T, dtype=torch.bool, device=device)
            for r, i in enumerate(rows):
                emissions[r, : len(logits[i])] = logits[i].float()
                mask[r, features[i]["first_pos"]] = True
            emissions.requires_grad_(True)
            (marginals,) = torch.autograd.grad(crf.log_partition(emissions, mask).sum(), emissions)
            paths = crf.decode(emissions.detach(), mask)
            for r, i in enumerate(rows):
                picked = marginals[r, features[i]["first_pos"]].cpu()  # (n, C)
                out.append((paths[r], picked[range(len(paths[r])), paths[r]].tolist()))
    return out
