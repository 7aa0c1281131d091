"""QA decoding over windows (bertkit.tasks.qa): an answer starts only in the window where its first token has the
most context, the rule of the original BERT's run_squad.py, checked against a plain re-implementation of that rule
and an exhaustive search over every span, on real SQuAD passages cut into many overlapping windows."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bertkit import BertConfig, Tokenizer
from bertkit.data.task_files import QAExample
from bertkit.model import BertForQuestionAnswering
from bertkit.tasks.base import Inference, run_model
from bertkit.tasks.qa import QaTask, max_context_windows
from bertkit.tasks.settings import TaskSettings


def original_max_context(spans: list[tuple[int, int]], cur: int, position: int) -> bool:
    """run_squad.py's _check_is_max_context, as the paper's code states it: spans are (start, length)."""
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return cur == best_index


def exhaustive_best(examples, features, logits, max_answer_length: int) -> list[tuple[float, str]]:
    """Every (window, start, end) whose start the rule allows, the best by start + end logit: (score, text)."""
    best = [(float("-inf"), "")] * len(examples)
    windows: dict[int, list[int]] = {}
    for j, f in enumerate(features):
        windows.setdefault(f["example"], []).append(j)
    for e, ids in windows.items():
        spans = [(features[j]["window_start"], len(features[j]["offsets"])) for j in ids]
        for cur, j in enumerate(ids):
            f, lg = features[j], logits[j]
            cs, n = f["context_start"], len(f["offsets"])
            for s in range(n):
                if not original_max_context(spans, cur, f["window_start"] + s):
                    continue
                for t in range(s, min(n, s + max_answer_length)):
                    score = float(lg[cs + s, 0] + lg[cs + t, 1])
                    if score > best[e][0]:
                        a, b = f["offsets"][s][0], f["offsets"][t][1]
                        best[e] = (score, examples[e].context[a:b])
    return best


@pytest.fixture(scope="module")
def squad(data_dir: Path, minilm_dir: Path) -> tuple[Tokenizer, list]:
    tok = Tokenizer.from_pretrained(minilm_dir)
    doc = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    rows = [{"id": qa["id"], "question": qa["question"], "context": p["context"]}
            for a in doc["data"][:3] for p in a["paragraphs"][:2] for qa in p["qas"][:2]]  # fmt: skip
    return tok, rows


@pytest.mark.parametrize(("length", "stride"), [(48, 8), (64, 24), (64, 40)])
def test_windows_answer_by_the_original_max_context_rule(squad, length: int, stride: int) -> None:
    tok, rows = squad
    task = QaTask(TaskSettings(max_seq_length=length, doc_stride=stride, max_query_length=16, n_best=64))
    examples = [task.from_json(r) for r in rows]
    features = task.features(examples, tok, None, train=False)
    assert len(features) > 3 * len(examples)  # passages over many overlapping windows
    # The owner table equals the rule asked token by token.
    home = max_context_windows(features)
    for e in range(len(examples)):
        ids = [j for j, f in enumerate(features) if f["example"] == e]
        spans = [(features[j]["window_start"], len(features[j]["offsets"])) for j in ids]
        for position, owner in enumerate(home[e].tolist()):
            assert original_max_context(spans, ids.index(owner), position), (e, position)
    # The decoded answers equal an exhaustive search over every allowed span (random weights: random logits).
    torch.manual_seed(length + stride)
    model = BertForQuestionAnswering(BertConfig.preset("tiny", vocab_size=tok.vocab_size)).eval()
    logits = run_model(model, task, features, tok.pad_id)
    want = exhaustive_best(examples, features, logits, task.settings.max_answer_length)
    got = task.predict(Inference(model, tok, {}), examples, features)
    for (score, text), answer in zip(want, got, strict=True):
        assert answer["answer"] == text and answer["score"] == pytest.approx(score, abs=1e-5)


class NullFavouring(torch.nn.Module):
    """A QA model whose no-answer score ([CLS]'s start + end logits) is raised by 2 x `bump`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.bump = model, 0.0

    def forward(self, **inputs):
        out = self.model(**inputs)
        out.logits[:, 0, :] += self.bump
        return out


def test_no_answer_is_the_models_setting_not_read_from_the_input(squad) -> None:
    # Whether "no answer" could win was read from the input's own gold flags: one unanswerable question in a file
    # changed every other question's answer, and JSON-lines input (no flags) never abstained.
    from dataclasses import replace

    tok, rows = squad
    task = QaTask(TaskSettings(max_seq_length=64, doc_stride=24, max_query_length=16))
    examples = [task.from_json(r) for r in rows]
    features = task.features(examples, tok, None, train=False)
    torch.manual_seed(0)
    model = NullFavouring(BertForQuestionAnswering(BertConfig.preset("tiny", vocab_size=tok.vocab_size)).eval())
    margins = sorted(a["score"] - a["null"] for a in task._answers(Inference(model, tok, {}), examples, features))
    model.bump = margins[len(margins) // 2] / 2  # + bump to the start and end logits of [CLS]: about half abstain
    spans = task._answers(Inference(model, tok, {}), examples, features)
    assert 0 < sum(a["null"] > a["score"] for a in spans) < len(spans)
    flagged = [replace(examples[0], is_impossible=True), *examples[1:]]
    assert task._answers(Inference(model, tok, {}), flagged, features) == spans  # the input's flags change nothing
    assert task.labels(examples) is None and task.settings.no_answer is False  # trained on SQuAD 1.1-style data
    assert task.labels(flagged) is None and task.settings.no_answer is True  # on data with unanswerable questions
    abstaining = task._answers(Inference(model, tok, {}), examples, features)
    for span, got in zip(spans, abstaining, strict=True):
        assert got["text"] == ("" if span["null"] > span["score"] else span["text"])


def test_questions_cut_at_max_query_length_are_reported(squad) -> None:
    # A question longer than max_query_length lost its end with no word (its answer was given, exit 0).
    tok, rows = squad
    task = QaTask(TaskSettings(max_seq_length=64, doc_stride=24, max_query_length=8))
    examples = [task.from_json(r) for r in rows]
    task.features(examples, tok, None, train=False)
    long = sum(len(tok.encode(ex.question)) - 2 > 8 for ex in examples)  # less [CLS] and [SEP]
    assert 0 < long < len(examples) and task.cut_questions == long
    assert task.long_inputs_note(len(examples), "dev.jsonl") == (
        f"note: {long} of {len(examples)} questions in dev.jsonl are longer than max_query_length 8 tokens: only "
        "their first 8 tokens are read"
    )


def test_a_model_trained_without_relocation_evaluates_and_predicts_cmrc_dev(
    tmp_path: Path, data_dir: Path, tiny_task_models: dict[str, Path], bertkit
) -> None:
    # CMRC 2018's dev set has answers that are not at their answer_start: evaluate and predict refused it for any
    # model fine-tuned without --relocate-answers, and pointed to that flag, which they do not have. Scoring and
    # prediction read answers by their text; training still refuses such answers.
    import shutil

    cmrc = json.loads((data_dir / "cmrc2018/dev.json").read_text(encoding="utf-8"))

    def misplaced(p: dict) -> bool:
        return any(p["context"][a["answer_start"] :].find(a["text"]) != 0 for q in p["qas"] for a in q["answers"])

    paragraphs = [p for a in cmrc["data"] for p in a["paragraphs"]]
    picked = [next(p for p in paragraphs if misplaced(p)), *paragraphs[:3]]
    data = tmp_path / "dev.json"
    data.write_text(json.dumps({"data": [{"paragraphs": picked}]}, ensure_ascii=False), encoding="utf-8")
    model = tmp_path / "qa"
    shutil.copytree(tiny_task_models["qa"], model)
    record = json.loads((model / "bertkit_task.json").read_text())
    record["settings"]["relocate_answers"] = False
    (model / "bertkit_task.json").write_text(json.dumps(record))
    r = bertkit("evaluate", "--model", model, "--data", data)
    assert r.status == 0 and '"exact_match"' in r.out, r.err
    r = bertkit("predict", "--model", model, "--input", data)
    assert r.status == 0 and r.out.count('"answer"') == sum(len(p["qas"]) for p in picked), r.err
    r = bertkit("finetune", "--task", "qa", "--model", model, "--train", data, "--out", tmp_path / "o")
    assert r.status == 2 and "is not at answer_start" in r.err and "--relocate-answers" in r.err


@pytest.fixture(scope="module")
def hf_minilm(minilm_dir: Path):
    """transformers' fast tokenizer on MiniLM's vocabulary: the oracle for windows, as its run_qa example makes them."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


@pytest.mark.parametrize(
    ("length", "stride", "capped"), [(48, 8, False), (64, 24, False), (96, 17, False), (48, 36, True)]
)
def test_windows_equal_transformers_overflowing_windows(
    squad, hf_minilm, length: int, stride: int, capped: bool
) -> None:
    # A window one token over max_seq_length (room for text counted with 2 special tokens, not 3), or windows a
    # whole window apart (doc_stride ignored), passed every test. bertkit's doc_stride is the step from one window's
    # start to the next (the original's); transformers' stride is the overlap: room - step.
    tok, rows = squad
    task = QaTask(TaskSettings(max_seq_length=length, doc_stride=stride, max_query_length=64))
    examples = [task.from_json(r) for r in rows]
    features = task.features(examples, tok, None, train=False)
    assert task.cut_questions == 0  # transformers reads the whole question: so must bertkit, to compare
    n_capped = 0
    for e, ex in enumerate(examples):
        windows = [f for f in features if f["example"] == e]
        room = length - len(hf_minilm(ex.question, add_special_tokens=False)["input_ids"]) - 3
        step = min(stride, room)  # the original's rule: never a gap between windows
        n_capped += step < stride
        want = hf_minilm(ex.question, ex.context, truncation="only_second", max_length=length, stride=room - step,
                         return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
        assert len(windows) == len(want["input_ids"]) > 1, ex.id
        for k, (f, ids, types, offsets) in enumerate(
            zip(windows, want["input_ids"], want["token_type_ids"], want["offset_mapping"], strict=True)
        ):
            assert f["input_ids"] == ids and f["token_type_ids"] == types, (ex.id, k)
            assert [tuple(o) for o in f["offsets"]] == [tuple(o) for o in offsets[f["context_start"] : -1]]
            assert f["window_start"] == k * step, (ex.id, k)
            # Full windows but the last: max_seq_length tokens, never more.
            assert len(ids) == length if k < len(windows) - 1 else len(ids) <= length
    # (48, 36): a doc_stride over some questions' room (they step by the room), not over others'.
    assert (0 < n_capped < len(examples)) if capped else n_capped == 0


@pytest.fixture(scope="module")
def squad_answered(data_dir: Path) -> list[QAExample]:
    """SQuAD dev questions with their first gold answer (text, character start), as training reads them."""
    doc = json.loads((data_dir / "squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    first = [
        (p["context"], qa, qa["answers"][0])
        for a in doc["data"][:4]
        for p in a["paragraphs"][:3]
        for qa in p["qas"][:3]
    ]
    return [QAExample(qa["id"], qa["question"], c, [(g["text"], g["answer_start"])]) for c, qa, g in first]


def test_training_labels_only_answers_wholly_inside_a_window(squad, squad_answered) -> None:
    # A window holding only part of the answer was labelled with that part, which is not the answer; the original
    # run_squad.py labels such a window [CLS] (its out_of_span rule). Small windows and step: many answers straddle.
    tok, _ = squad
    task = QaTask(TaskSettings(max_seq_length=40, doc_stride=7, max_query_length=16))
    features = task.features(squad_answered, tok, None, train=True)
    labelled = straddling = 0
    for f in features:
        ex = squad_answered[f["example"]]
        text, a = ex.answers[0]
        assert ex.context[a : a + len(text)] == text
        cs, offsets = f["context_start"], f["offsets"]
        inside = [i for i, (s, e) in enumerate(offsets) if e > a and s < a + len(text)]
        whole = bool(inside) and offsets[inside[0]][0] <= a and offsets[inside[-1]][1] >= a + len(text)
        label = (f["start_positions"], f["end_positions"])
        if whole:  # the tokens that hold the answer, mapped back through their offsets: the answer's text
            assert label == (cs + inside[0], cs + inside[-1]), ex.id
            got = ex.context[offsets[label[0] - cs][0] : offsets[label[1] - cs][1]]
            # (or, for an answer inside one word piece, as "8" of "18" in this data, the piece that holds it)
            assert got == text or (text in got and len(inside) == 1), (ex.id, got, text)
            labelled += 1
        else:
            assert label == (0, 0), (ex.id, f["window_start"], label)
            straddling += bool(inside)
    assert labelled > len(squad_answered) and straddling > 10  # 102 and 15


class FixedLogits(torch.nn.Module):
    """A stub QA model that answers each feature with logits set in advance, found by the feature's input ids."""

    def __init__(self, features, logits):
        super().__init__()
        self.table = {tuple(f["input_ids"]): lg for f, lg in zip(features, logits, strict=True)}
        assert len(self.table) == len(features)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # run_model reads the device from a parameter

    def forward(self, input_ids, attention_mask, **_):
        out = torch.zeros(*input_ids.shape, 2)
        for row, (ids, n) in enumerate(zip(input_ids.tolist(), attention_mask.sum(1).tolist(), strict=True)):
            out[row, :n] = self.table[tuple(ids[:n])]
        return SimpleNamespace(logits=out)


def test_no_answer_weighs_the_lowest_null_score_over_windows(squad) -> None:
    # The no-answer score of a question read in several windows is the lowest [CLS] score of any window (original
    # run_squad.py's score_null, transformers' postprocess_qa_predictions' min_null_score), not the highest: one
    # window whose [CLS] scores high says no more than that the answer is not in that window.
    tok, rows = squad
    task = QaTask(TaskSettings(max_seq_length=64, doc_stride=24, max_query_length=16))
    task.settings.no_answer = True
    examples = [task.from_json(r) for r in rows]
    features = task.features(examples, tok, None, train=False)
    torch.manual_seed(1)
    model = BertForQuestionAnswering(BertConfig.preset("tiny", vocab_size=tok.vocab_size)).eval()
    logits = [lg.clone() for lg in run_model(model, task, features, tok.pad_id)]
    best = exhaustive_best(examples, features, logits, task.settings.max_answer_length)
    # Every window's null score 1 over the best span's score, but one window's (a different one per question),
    # 1 under it; every second question keeps all its windows over: it abstains.
    for e, (score, _) in enumerate(best):
        ids = [j for j, f in enumerate(features) if f["example"] == e]
        assert len(ids) > 1
        for k, j in enumerate(ids):
            low = e % 2 == 0 and k == (e // 2) % len(ids)
            logits[j][0, :] = (score + (-1.0 if low else 1.0)) / 2
    got = task.predict(Inference(FixedLogits(features, logits), tok, {}), examples, features)
    for e, ((score, text), answer) in enumerate(zip(best, got, strict=True)):
        if e % 2 == 0:
            assert text and answer["answer"] == text and answer["score"] == pytest.approx(score, abs=1e-5)
        else:
            assert answer["answer"] == "" and answer["score"] == pytest.approx(score + 1, abs=1e-5)


@pytest.mark.parametrize("longest", [1, 2, 5])
def test_no_answer_span_is_longer_than_max_answer_length(squad, longest: int) -> None:
    # The best span is longest + 1 tokens (start and end logits peak that far apart), the next best `longest`
    # tokens: with max_answer_length = longest, that one is the answer (a span one token too long was given).
    tok, rows = squad
    task = QaTask(TaskSettings(max_seq_length=384, doc_stride=128, max_answer_length=longest))
    examples = [task.from_json(rows[0])]
    features = task.features(examples, tok, None, train=False)
    assert len(features) == 1
    f, cs = features[0], features[0]["context_start"]
    logits = torch.zeros(len(f["input_ids"]), 2)
    first = cs + 20
    logits[first, 0] = 5.0
    logits[first + longest, 1] = 5.0  # span of longest + 1 tokens: score 10
    logits[first + longest - 1, 1] = 4.0  # span of longest tokens: score 9
    got = task.predict(Inference(FixedLogits(features, [logits]), tok, {}), examples, features)[0]
    a, b = f["offsets"][20][0], f["offsets"][20 + longest - 1][1]
    assert (got["answer"], got["start"], got["end"], got["score"]) == (examples[0].context[a:b], a, b, 9.0)
