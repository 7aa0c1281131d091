"""bertkit.metrics against the reference implementations: entity F1 equals seqeval's, SQuAD scores equal the
official evaluation script's formulas, CMRC 2018 scores by character, and the regression metrics equal scipy's."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.data.task_files import read_conll
from bertkit.metrics import (
    accuracy,
    entity_prf,
    macro_f1,
    mean_squared_error,
    pearson,
    qa_scores,
    regression_scores,
    spearman,
)

# ------------------------------------------------------------------------------------------ classification


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcde")), min_size=1, max_size=40))
def test_accuracy_and_macro_f1_equal_scikit_learn(pairs: list[tuple[str, str]]) -> None:
    # Every class that is gold or predicted counts, one never predicted (F1 0) and one only predicted (F1 0) too.
    from sklearn.metrics import accuracy_score, f1_score

    gold, pred = map(list, zip(*pairs, strict=True))
    labels = sorted(set(gold) | set(pred))
    assert accuracy(pred, gold) == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    want = f1_score(gold, pred, average="macro", labels=labels, zero_division=0)
    assert macro_f1(pred, gold) == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------------------------------ entities and spans


def _perturb(tags: list[str], rng: random.Random, labels: list[str]) -> list[str]:
    out = list(tags)
    for i in range(len(out)):
        if rng.random() < 0.08:
            out[i] = rng.choice(labels)  # includes invalid I- after O, type switches, ...
    return out


def _to_bioes(tags: list[str]) -> list[str]:
    out = []
    for i, t in enumerate(tags):
        nxt = tags[i + 1] if i + 1 < len(tags) else "O"
        cont = nxt.startswith("I-") and nxt[2:] == t[2:]
        if t.startswith("B-"):
            out.append(t if cont else "S-" + t[2:])
        elif t.startswith("I-"):
            out.append(t if cont else "E-" + t[2:])
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("name", ["wikiann_en/dev.txt", "cluener2020/dev.txt"])
def test_entity_f1_equals_seqeval(data_dir: Path, name: str) -> None:
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [s.tags for s in read_conll(data_dir / name)][:1500]
    labels = sorted({t for s in gold for t in s})
    rng = random.Random(0)
    pred = [_perturb(s, rng, labels) for s in gold]
    for g, p in ((gold, pred), ([_to_bioes(s) for s in gold], [_to_bioes(s) for s in pred])):
        ours = entity_prf(p, g)
        assert ours["precision"] == pytest.approx(precision_score(g, p), abs=1e-12)
        assert ours["recall"] == pytest.approx(recall_score(g, p), abs=1e-12)
        assert ours["f1"] == pytest.approx(f1_score(g, p), abs=1e-12)
        assert 0.3 < ours["f1"] < 0.95  # the perturbation really changes things


def _official_normalize(s: str) -> str:
    # The SQuAD v1.1 evaluation script's normalize_answer, step by step.
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _official_f1(pred: str, gold: str) -> float:
    p, g = _official_normalize(pred).split(), _official_normalize(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def test_squad_scores_equal_the_official_formulas(data_dir: Path) -> None:
    data = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text())["data"]
    answers = {q["id"]: [a["text"] for a in q["answers"]] for art in data for p in art["paragraphs"] for q in p["qas"]}
    rng = random.Random(1)
    preds = {}
    for qid, golds in list(answers.items())[:3000]:
        words = golds[0].split()
        choice = rng.randrange(5)
        if choice == 0:
            preds[qid] = golds[0]
        elif choice == 1:
            preds[qid] = "The " + golds[0].upper() + "."
        elif choice == 2:
            preds[qid] = " ".join(words[: max(1, len(words) // 2)])
        elif choice == 3:
            preds[qid] = golds[0] + " and more words"
        else:
            preds[qid] = "unrelated"
    subset = {k: answers[k] for k in preds}
    ours = qa_scores(preds, subset, "en")
    em = sum(max(float(_official_normalize(preds[k]) == _official_normalize(g)) for g in v) for k, v in subset.items())
    f1 = sum(max(_official_f1(preds[k], g) for g in v) for k, v in subset.items())
    assert ours["exact_match"] == pytest.approx(em / len(subset), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1 / len(subset), abs=1e-12)
    assert 0.3 < ours["exact_match"] < ours["f1"] < 1.0


def test_cmrc_character_scores() -> None:
    s = qa_scores(
        {"a": "北京大学", "b": "在北京", "c": "上海"}, {"a": ["北京大学。"], "b": ["北京"], "c": ["北京"]}, "zh"
    )
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx((1 + 0.8 + 0) / 3)  # "在北京" vs "北京": P 2/3, R 1 -> F1 0.8


# The official CMRC 2018 evaluation (cmrc2018_evaluate.py), as its published code defines it: "mixed segmentation"
# (each character in U+4E00-U+9FA5 alone, the text between split by NLTK's word tokenizer, its punctuation list
# dropped), F1 over the longest common substring of segments, EM on the texts without that punctuation. NLTK's
# sentence splitter, which word_tokenize runs first, needs data files that are not installed; its word tokenizer is
# called directly (it changes nothing on a run of one sentence, which answers are).
_OFFICIAL_PUNCT = ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”", "；",
                   "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"]  # fmt: skip


def _official_segments(text: str) -> list[str]:
    from nltk.tokenize import NLTKWordTokenizer

    words, out, run = NLTKWordTokenizer().tokenize, [], ""
    for ch in text.lower().strip():
        if ch in _OFFICIAL_PUNCT:
            continue
        if re.search("[\u4e00-\u9fa5]", ch):
            out += words(run) if run else []
            out.append(ch)
            run = ""
        else:
            run += ch
    return out + (words(run) if run else [])


def _official_cmrc_f1(prediction: str, answer: str) -> float:
    p, a = _official_segments(prediction), _official_segments(answer)
    table = [[0] * (len(a) + 1) for _ in range(len(p) + 1)]
    lcs = 0
    for i in range(len(p)):
        for j in range(len(a)):
            if p[i] == a[j]:
                table[i + 1][j + 1] = table[i][j] + 1
                lcs = max(lcs, table[i + 1][j + 1])
    return 0.0 if lcs == 0 else 2 * lcs / (len(p) + len(a))


def _official_cmrc_em(prediction: str, answer: str) -> float:
    def strip(s: str) -> str:
        return "".join(ch for ch in s.lower().strip() if ch not in _OFFICIAL_PUNCT)

    return float(strip(prediction) == strip(answer))


def _real_chinese_answers(data_dir: Path) -> list[tuple[str, str]]:
    """(answer, prediction) pairs from CMRC 2018's and DRCD's dev sets: each gold answer against the passage's text
    around it, cut at random points (a model's near misses), and against another gold answer."""
    rng = random.Random(0)
    pairs = []
    for name in ("cmrc2018/dev.json", "drcd/dev.json"):
        doc = json.loads((data_dir / name).read_text(encoding="utf-8"))
        for article in doc["data"]:
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    for ans in qa["answers"][:2]:
                        text, start = ans["text"], max(0, context.find(ans["text"]))
                        a, b = max(0, start - rng.randint(0, 12)), start + len(text) + rng.randint(-3, 12)
                        pairs += [(text, context[a:b]), (text, qa["answers"][-1]["text"])]
    return pairs


def test_cmrc_scores_equal_the_official_evaluation(data_dir: Path) -> None:
    # bertkit split runs of other text by its own rule, and at dropped punctuation: "6.40米" scored 0.47 where the
    # official script gives 0.31, "BCPL（B" against "BCPL" 0.67 where it gives 0. On the dev sets' mean F1, 0.0705
    # against 0.0700.
    from bertkit.metrics import cmrc_em, cmrc_f1

    pairs = _real_chinese_answers(data_dir)
    assert len(pairs) > 10_000
    f1_differ = [(a, p) for a, p in pairs if abs(cmrc_f1(p, a) - _official_cmrc_f1(p, a)) > 1e-12]
    em_differ = [(a, p) for a, p in pairs if cmrc_em(p, a) != _official_cmrc_em(p, a)]
    assert not f1_differ and not em_differ, (f1_differ[:5], em_differ[:5])
    assert cmrc_f1("6.40米，兩頭連接到單打邊線。", "6.40米") == pytest.approx(
        _official_cmrc_f1("6.40米，兩頭連接到單打邊線。", "6.40米")
    )
    assert cmrc_f1("BCPL（B", "BCPL") == 0.0


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from(list("ab1 2.,;:$%&?!()[]'\"-/…«»“”’北京大学，。（）\t")), max_size=24))
def test_cmrc_segments_equal_the_official_on_mixed_text(text: str) -> None:
    from bertkit.metrics import _cmrc_segments

    assert _cmrc_segments(text) == _official_segments(text)


# ------------------------------------------------------------------------------------------ regression


def test_regression_metrics_equal_scipy() -> None:
    from scipy import stats

    rng = random.Random(0)
    gold = [rng.choice([0.0, 0.5, 1.0, 2.0, 2.5]) for _ in range(300)]  # many ties, as scores on a scale have
    pred = [g + rng.gauss(0, 0.8) for g in gold]
    pred[:40] = [round(p, 1) for p in pred[:40]]  # ties in the predictions too
    assert pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold).statistic, abs=1e-12)
    assert spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold).statistic, abs=1e-12)
    assert mean_squared_error(pred, gold) == pytest.approx(float(np.mean((np.array(pred) - np.array(gold)) ** 2)))
    assert 0.3 < pearson(pred, gold) < 0.95
    # A constant prediction has no correlation (scipy: NaN); 0 keeps the metrics JSON and the best-model choice sane.
    assert pearson([0.3] * 5, [1, 2, 3, 4, 5]) == 0.0 and spearman([0.3] * 5, [1, 2, 3, 4, 5]) == 0.0
    assert set(regression_scores(pred, gold)) == {"pearson", "spearman", "mse", "examples"}
