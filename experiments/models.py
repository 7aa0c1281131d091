"""Models and features that only the experiments need: the ELMo-style concatenation of two one-directional
encoders, Word2Vec vectors (gensim) as features or as an encoder's embedding layer, classical baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bertkit.config import BertConfig
from bertkit.constants import IGNORE_INDEX
from bertkit.data.task_files import TaggedSentence, TextExample
from bertkit.files import read_corpus_lines
from bertkit.metrics import accuracy, entity_prf
from bertkit.model import BertModel, TaskOutput, init_weights, reverse_real_tokens
from bertkit.tasks.registry import task_class
from bertkit.tokenizer import Tokenizer


class ConcatBiLM(nn.Module):
    """ELMo-style: a left-to-right and a right-to-left encoder, pre-trained separately; their outputs are
    concatenated and one output layer reads them (per token for NER, the two sentence vectors for classification).
    The right-to-left encoder reads the sequence reversed, as in its pre-training."""

    def __init__(self, l2r: BertModel, r2l: BertModel, num_labels: int, per_token: bool, dropout: float):
        super().__init__()
        self.l2r, self.r2l = l2r, r2l
        self.per_token = per_token
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(l2r.config.hidden_size + r2l.config.hidden_size, num_labels)
        init_weights(self.classifier, l2r.config.initializer_range)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None) -> TaskOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        fwd = self.l2r(input_ids, token_type_ids, attention_mask)
        rev = lambda t: reverse_real_tokens(t, attention_mask)  # noqa: E731
        bwd = self.r2l(rev(input_ids), rev(token_type_ids), attention_mask)
        if self.per_token:
            h = torch.cat([fwd.last_hidden_state, rev(bwd.last_hidden_state)], dim=-1)  # (B, T, 2H)
            logits = self.classifier(self.dropout(h))  # (B, T, C)
            loss = None
            if labels is not None:
                loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        else:
            # Each causal encoder's pooler reads its last real token: the whole sentence, from either end.
            h = torch.cat([fwd.pooler_output, bwd.pooler_output], dim=-1)  # (B, 2H)
            logits = self.classifier(self.dropout(h))  # (B, C)
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return TaskOutput(loss, logits)


def concat_bilm_factory(l2r_dir: Path, r2l_dir: Path, task: str):
    """A ModelFactory for `ConcatBiLM` over the L2R and R2L model directories, with the run's dropout."""

    def build(config: BertConfig, num_labels: int | None) -> nn.Module:
        over = {"hidden_dropout_prob": config.hidden_dropout_prob,
                "attention_probs_dropout_prob": config.attention_probs_dropout_prob}  # fmt: skip
        encoders = []
        for d in (l2r_dir, r2l_dir):
            encoders.append(BertModel.from_pretrained(d, config=replace(BertConfig.load(d), **over)))
        return ConcatBiLM(*encoders, num_labels or 2, per_token=task == "ner", dropout=config.hidden_dropout_prob)

    return build


# ------------------------------------------------------------------------------------------------- Word2Vec
def train_word2vec(corpus: Sequence[Path], tokenizer: Tokenizer, skip_gram: bool, dim: int, epochs: int, seed: int):
    """CBOW or Skip-gram vectors (gensim) over the corpus cut into the tokenizer's tokens, so that every vector
    belongs to a vocabulary entry."""
    from gensim.models import Word2Vec

    lines = [line for line in read_corpus_lines(corpus) if line.strip()]
    # The batch path (table lookup for CJK text; the same tokens as `tokenize`, tested) is several times faster.
    sentences = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer.ids_batch(lines)]
    model = Word2Vec(
        sentences, vector_size=dim, window=5, min_count=1, sg=int(skip_gram), epochs=epochs, seed=seed, workers=2
    )
    return model.wv


def embedding_matrix(wv, tokenizer: Tokenizer, std: float, seed: int = 0) -> torch.Tensor:
    """(V, dim) vectors in vocabulary order, rescaled to BERT's initial std so that position and segment
    embeddings are not drowned in the sum; tokens Word2Vec never saw keep a random vector of that std."""
    g = np.random.default_rng(seed)
    found = np.stack([wv[t] for t in tokenizer.vocab if t in wv.key_to_index])
    scale = std / found.std()
    rows = [wv[t] * scale if t in wv.key_to_index else g.normal(0, std, wv.vector_size) for t in tokenizer.vocab]
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def word2vec_init_factory(task: str, vectors: torch.Tensor):
    """The task's standard encoder from random initialisation, its (trainable) word embeddings replaced by Word2Vec
    vectors."""

    def build(config: BertConfig, num_labels: int | None) -> nn.Module:
        model = task_class(task).model_class(config, num_labels=num_labels)
        with torch.no_grad():
            model.bert.embeddings.word_embeddings.weight.copy_(vectors)
        return model

    return build


def _token_vector(wv, tokenizer: Tokenizer, word: str) -> np.ndarray:
    pieces = tokenizer.tokenize(word)
    if pieces and pieces[0] in wv.key_to_index:
        return wv[pieces[0]]
    return np.zeros(wv.vector_size, dtype=np.float32)


def word2vec_sentence_features(wv, tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """The average of the token vectors of each text."""
    out = np.zeros((len(texts), wv.vector_size), dtype=np.float32)
    for i, text in enumerate(texts):
        vecs = [wv[t] for t in tokenizer.tokenize(text) if t in wv.key_to_index]
        if vecs:
            out[i] = np.mean(vecs, axis=0)
    return out


def word2vec_token_features(wv, tokenizer: Tokenizer, sentences: Sequence[TaggedSentence]) -> np.ndarray:
    """Per token: its vector and its two neighbours' (a window of 3), concatenated."""
    rows = []
    for s in sentences:
        vecs = [_token_vector(wv, tokenizer, w) for w in s.tokens]
        zero = np.zeros(wv.vector_size, dtype=np.float32)
        padded = [zero, *vecs, zero]
        rows += [np.concatenate(padded[i : i + 3]) for i in range(len(vecs))]
    return np.stack(rows)


# ------------------------------------------------------------------------------------------ classical baselines
def tfidf_logreg_accuracy(train: Sequence[TextExample], dev: Sequence[TextExample]) -> float:
    """TF-IDF character 1-3-grams + logistic regression; for pairs both sides and their product (shared n-grams)."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    pair = train[0].text_b is not None
    vec.fit([ex.text_a for ex in train] + ([ex.text_b for ex in train] if pair else []))

    def feats(examples):
        a = vec.transform([ex.text_a for ex in examples])
        if not pair:
            return a
        b = vec.transform([ex.text_b for ex in examples])
        return hstack([a, b, a.multiply(b)]).tocsr()

    clf = LogisticRegression(max_iter=2000, C=4.0).fit(feats(train), [ex.label for ex in train])
    return accuracy(list(clf.predict(feats(dev))), [ex.label for ex in dev])


def linear_accuracy(x_train: np.ndarray, y_train: Sequence[str], x_dev: np.ndarray, y_dev: Sequence[str]) -> float:
    """Dev accuracy of a logistic regression trained on the feature rows `x_train`."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(x_train, list(y_train))
    return accuracy(list(clf.predict(x_dev)), list(y_dev))


def linear_ner_f1(wv, tokenizer: Tokenizer, train: Sequence[TaggedSentence], dev: Sequence[TaggedSentence]) -> float:
    """Entity F1 of a per-token logistic regression over Word2Vec window features."""
    from sklearn.linear_model import LogisticRegression

    x_train = word2vec_token_features(wv, tokenizer, train)
    y_train = [t for s in train for t in s.tags or []]
    clf = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    return _token_predictions_f1(clf.predict(word2vec_token_features(wv, tokenizer, dev)), dev)


def _token_predictions_f1(flat: Sequence[str], dev: Sequence[TaggedSentence]) -> float:
    """Entity F1 of one predicted tag per token, `flat` holding the dev sentences' tokens one after another."""
    pred, k = [], 0
    for s in dev:
        pred.append(list(flat[k : k + len(s.tokens)]))
        k += len(s.tokens)
    return entity_prf(pred, [s.tags or [] for s in dev])["f1"]


def _char_window_features(tokens: Sequence[str], i: int) -> dict[str, float]:
    """One-hot features of token i: itself and its two neighbours each side, and the two bigrams through it."""

    def at(k: int) -> str:
        return tokens[k] if 0 <= k < len(tokens) else "<s>"

    feats = {f"w{d}={at(i + d)}": 1.0 for d in (-2, -1, 0, 1, 2)}
    feats[f"b-1={at(i - 1)}{at(i)}"] = 1.0
    feats[f"b+1={at(i)}{at(i + 1)}"] = 1.0
    return feats


def char_window_ner_f1(train: Sequence[TaggedSentence], dev: Sequence[TaggedSentence]) -> float:
    """Entity F1 of the classical tagger: per-token logistic regression over one-hot characters in a +-2 window."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    def features(sentences: Sequence[TaggedSentence]) -> list[dict[str, float]]:
        return [_char_window_features(s.tokens, i) for s in sentences for i in range(len(s.tokens))]

    def int32(x):  # liblinear wants 32-bit sparse indices
        x.indices, x.indptr = x.indices.astype(np.int32), x.indptr.astype(np.int32)
        return x

    vec = DictVectorizer()
    x_train = int32(vec.fit_transform(features(train)))
    # One-vs-rest liblinear: far faster than a multinomial lbfgs fit over these sparse features, for no lower F1.
    clf = OneVsRestClassifier(LogisticRegression(C=4.0, solver="liblinear"))
    clf.fit(x_train, [t for s in train for t in s.tags or []])
    return _token_predictions_f1(clf.predict(int32(vec.transform(features(dev)))), dev)
