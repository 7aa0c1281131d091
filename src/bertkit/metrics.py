"""Task metrics: accuracy / macro-F1, multi-label F1s, regression correlations and error, entity-level P/R/F1
(conlleval chunking, as seqeval), SQuAD and CMRC 2018.

All scores are fractions in [0, 1].
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Collection, Sequence

# ---------------------------------------------------------------------------------------------- classification


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Share of predictions equal to the gold labels (0 when there are none)."""
    return sum(p == g for p, g in zip(pred, gold, strict=True)) / max(len(gold), 1)


def macro_f1(pred: Sequence, gold: Sequence) -> float:
    """Unweighted mean over the gold and predicted classes of each class's F1."""
    scores = []
    for c in sorted(set(gold) | set(pred), key=str):
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(pred, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(pred, gold, strict=True))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / max(len(scores), 1)


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 0 when there is nothing to score (no gold and no predicted positives)."""
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def multilabel_scores(
    pred: Sequence[Collection[str]], gold: Sequence[Collection[str]], labels: Sequence[str]
) -> dict[str, float]:
    """Scores of predicted label sets against gold label sets (one set per example, possibly empty).

    - micro_f1: F1 of all (example, label) decisions pooled;
    - macro_f1: the unweighted mean over `labels` of each label's F1 (0 for a label never gold nor predicted, as
      scikit-learn's `zero_division=0`, so a rare label the model never predicts counts against it);
    - accuracy: example-based accuracy, the mean over examples of |pred & gold| / |pred | gold| (Godbole and
      Sarawagi), where an empty prediction for an example without labels counts 1;
    - exact_match: the share of examples whose predicted set equals the gold set (subset accuracy)."""
    counts = {label: [0, 0, 0] for label in labels}  # tp, fp, fn
    jaccard, exact = 0.0, 0
    for p, g in zip(pred, gold, strict=True):
        p, g = set(p), set(g)
        for label in p | g:
            c = counts.setdefault(label, [0, 0, 0])
            c[0 if label in p and label in g else 1 if label in p else 2] += 1
        jaccard += len(p & g) / len(p | g) if p | g else 1.0
        exact += p == g
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    n = max(len(gold), 1)
    return {
        "micro_f1": _f1(tp, fp, fn),
        "macro_f1": sum(_f1(*counts[label]) for label in labels) / max(len(labels), 1),
        "accuracy": jaccard / n,
        "exact_match": exact / n,
        "examples": len(gold),
    }


# ---------------------------------------------------------------------------------------------- regression


def mean_squared_error(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Mean of the squared differences (0 when there are none)."""
    return math.fsum((p - g) ** 2 for p, g in zip(pred, gold, strict=True)) / max(len(gold), 1)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation coefficient r. When either side is constant r is undefined; this returns 0 then (no
    measurable relation), so that a model that predicts one value for everything ranks as no better than chance
    instead of poisoning the metrics with NaN."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"{n} predictions for {len(y)} gold values")
    if n < 2:
        return 0.0
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    dx, dy = [a - mx for a in x], [b - my for b in y]
    sxx, syy = math.fsum(d * d for d in dx), math.fsum(d * d for d in dy)
    if sxx == 0.0 or syy == 0.0:
        return 0.0
    r = math.fsum(a * b for a, b in zip(dx, dy, strict=True)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks (as scipy.stats.rankdata's default)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks (ties averaged); 0 when either side is constant."""
    return pearson(_ranks(x), _ranks(y))


def regression_scores(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation, mean squared error and the example count: what GLUE reports for STS-B
    (the two correlations) plus the error the model is trained on."""
    return {
        "pearson": pearson(pred, gold),
        "spearman": spearman(pred, gold),
        "mse": mean_squared_error(pred, gold),
        "examples": len(gold),
    }


# ---------------------------------------------------------------------------------------------- entities


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag in ("O", ""):
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks of a BIO/BIOES tag sequence, conlleval-style.

    Invalid sequences are repaired the usual way: an I- (or E-) after O or after another type opens an entity.
    """
    spans: list[tuple[str, int, int]] = []
    prev, prev_kind, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        cur, kind = _split_tag(tag)
        ends = (
            prev in ("E", "S") or (prev in ("B", "I") and cur in ("B", "S", "O")) or (prev != "O" and prev_kind != kind)
        )
        starts = (
            cur in ("B", "S") or (prev in ("E", "S", "O") and cur in ("E", "I")) or (cur != "O" and prev_kind != kind)
        )
        if ends and prev != "O":
            spans.append((prev_kind, begin, i - 1))
        if starts:
            begin = i
        prev, prev_kind = cur, kind
    return spans


def span_tags(spans: Sequence[tuple[str, int, int]], length: int, bioes: bool = False) -> list[str]:
    """The tag sequence of `length` tags that marks exactly the (type, first, last) `spans`, in BIO (or BIOES): the
    inverse of `entity_spans`, and always a valid sequence."""
    tags = ["O"] * length
    for kind, a, b in spans:
        if bioes and a == b:
            tags[a] = f"S-{kind}"
            continue
        tags[a] = f"B-{kind}"
        for i in range(a + 1, b + 1):
            tags[i] = f"E-{kind}" if bioes and i == b else f"I-{kind}"
    return tags


def entity_prf(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (exact type and span match)."""
    p_set = {(s, *e) for s, tags in enumerate(pred) for e in entity_spans(tags)}
    g_set = {(s, *e) for s, tags in enumerate(gold) for e in entity_spans(tags)}
    correct = len(p_set & g_set)
    precision = correct / len(p_set) if p_set else 0.0
    recall = correct / len(g_set) if g_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------------------------- SQuAD (English)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower-case, drop punctuation and the articles a/an/the, squeeze white space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
    """SQuAD's F1 over the bags of words of the normalised prediction and answer."""
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(p) & Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, truth: str) -> float:
    """SQuAD's exact match: 1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


# ---------------------------------------------------------------------------------------------- CMRC 2018 (Chinese)

# The official script's punctuation: dropped before scoring (its "……" is one entry of two characters, which no
# single character equals, so "…" stays).
_CMRC_PUNCT = set("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』")
_CMRC_CJK = re.compile("[\u4e00-\u9fa5]")  # what the official script counts as Chinese: one segment per character
# The rules of NLTK's word tokenizer (which the official script runs on the text between Chinese characters) that
# can apply once its punctuation is dropped, as substitutions that put spaces around a token: a comma not followed by
# a digit (91,971 stays whole), ; @ # $ % & ? !, a run's final period (6.40 and U.S. inside stay whole), an
# ellipsis, brackets, double quotes (written `` and '' by NLTK), dashes and the quotes NLTK splits off, and the
# clitics 's 'm 'd 'll 're 've n't and contractions such as cannot.
_CMRC_RUN_RULES = [
    (re.compile(r"([«“‘„]|`+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
    (re.compile(r"([^.])(\.)([\])}>\"'»”’ ]*+)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"(,)([^\d])"), r" \1 \2"),
    (re.compile(r"(,)$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[\][(){}<>]"), r" \g<0> "),
]
_CMRC_END_RULES = [  # on the run with a space added at each end
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
    *(
        (re.compile(rf"(?i)\b({a})({b})\b"), r" \1 \2 ")
        for a, b in (
            ("can", "not"),
            ("d", "'ye"),
            ("gim", "me"),
            ("gon", "na"),
            ("got", "ta"),
            ("lem", "me"),
            ("more", "'n"),
        )
    ),
    (re.compile(r"(?i)\b(wan)(na)(?=\s)"), r" \1 \2 "),
    (re.compile(r"(?i) ('t)(is)\b"), r" \1 \2 "),
    (re.compile(r"(?i) ('t)(was)\b"), r" \1 \2 "),
]


def _cmrc_words(run: str) -> list[str]:
    """The words of a run of text between Chinese characters, split as NLTK's word tokenizer splits them."""
    for pattern, replacement in _CMRC_RUN_RULES:
        run = pattern.sub(replacement, run)
    run = f" {run} "
    for pattern, replacement in _CMRC_END_RULES:
        run = pattern.sub(replacement, run)
    return run.split()


def _cmrc_segments(s: str) -> list[str]:
    """The official script's mixed segmentation with punctuation removed: each Chinese character alone, the text
    between them split into words (`_cmrc_words`); a punctuation mark is dropped without splitting there."""
    out: list[str] = []
    run = ""
    for ch in s.lower().strip():
        if ch in _CMRC_PUNCT:
            continue
        if _CMRC_CJK.match(ch):
            out += _cmrc_words(run) if run else []
            out.append(ch)
            run = ""
        else:
            run += ch
    return out + (_cmrc_words(run) if run else [])


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best = 0
    prev = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def cmrc_f1(prediction: str, truth: str) -> float:
    """CMRC 2018's F1: longest common substring over mixed segments (characters for Chinese)."""
    p, t = _cmrc_segments(prediction), _cmrc_segments(truth)
    lcs = _longest_common_substring(p, t)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(t)
    return 2 * precision * recall / (precision + recall)


def cmrc_em(prediction: str, truth: str) -> float:
    """CMRC 2018's exact match: 1.0 when equal after lower-casing, trimming and dropping punctuation."""

    def strip(s: str) -> str:
        return "".join(ch for ch in s.lower().strip() if ch not in _CMRC_PUNCT)

    return float(strip(prediction) == strip(truth))


def qa_scores(predictions: dict[str, str], answers: dict[str, list[str]], lang: str = "en") -> dict[str, float]:
    """Mean over questions of the best EM and F1 against any gold answer; `lang` 'zh' scores as CMRC 2018.

    A question with no gold answers (SQuAD v2 unanswerable) scores 1 only for an empty prediction.
    """
    em_fn, f1_fn = (cmrc_em, cmrc_f1) if lang == "zh" else (squad_em, squad_f1)
    em = f1 = 0.0
    for qid, golds in answers.items():
        pred = predictions.get(qid, "")
        if not golds:
            em += float(pred == "")
            f1 += float(pred == "")
            continue
        em += max(em_fn(pred, g) for g in golds)
        f1 += max(f1_fn(pred, g) for g in golds)
    n = max(len(answers), 1)
    return {"exact_match": em / n, "f1": f1 / n}


def majority_accuracy(train_labels: Sequence[str], dev_labels: Sequence[str]) -> float:
    """Dev accuracy of always predicting the most frequent training label: the floor every comparison shows."""
    top = Counter(train_labels).most_common(1)[0][0]
    return accuracy([top] * len(dev_labels), list(dev_labels))
