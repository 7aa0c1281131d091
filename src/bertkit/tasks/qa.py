"""Extractive QA: question as segment A, passage as B; start/end scores over passage tokens; long passages in
sliding windows (`doc_stride` tokens apart, as the original); the best span over all windows is mapped back to the
passage text through character offsets. SQuAD v2 "no answer" when the data has unanswerable questions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bertkit.data.task_files import QAExample, json_object_lines, numbered_lines, read_squad
from bertkit.errors import BertkitError
from bertkit.metrics import qa_scores
from bertkit.model import BertForQuestionAnswering
from bertkit.tasks.base import Feature, Inference, Task, text_field, with_marks
from bertkit.tasks.settings import QA_MAX_SEQ_LENGTH
from bertkit.tokenizer import Tokenizer, contains_cjk


class QaTask(Task):
    """Extractive QA (`qa`): start/end scores over passage tokens, long passages in sliding windows."""

    name = "qa"
    main_metric = "f1"
    curve_scores = ("f1", "exact_match")
    model_class = BertForQuestionAnswering
    head = "span"
    example_class = QAExample
    input_schema = '{"question": "...", "context": "..."}'
    json_fields = ("question", "context", "id")
    stdin_suffix = ".jsonl"  # predict's standard input: JSON lines, as a question and its passage need
    default_max_seq_length = QA_MAX_SEQ_LENGTH
    onnx_outputs = ("start_logits", "end_logits")
    export_kind = "qa"
    per_token = True
    long_field = "context"

    def read(self, path: str | Path, labelled: bool = True) -> list[QAExample]:
        """SQuAD JSON, or a `.jsonl` file of {question, context, id?} objects without answers (prediction)."""
        path = Path(path)
        if path.suffix == ".jsonl":  # {"question": ..., "context": ..., "id": optional} per line
            out = []
            for n, obj in json_object_lines(path, numbered_lines(path), "a JSON object {question, context}"):
                try:
                    out.append(self.from_json(obj, n))
                except BertkitError as e:
                    raise BertkitError(f"{path}:{n}: {e}") from None
            return out
        # Scoring and prediction read answers by their text; only training needs them where answer_start says
        # (`check_trainable`), so evaluating a model on CMRC 2018's dev set, whose answers are not all at their
        # offsets, needs no repair.
        examples = read_squad(path, relocate_answers=True)
        if labelled and all(not ex.answers and not ex.is_impossible for ex in examples):
            raise BertkitError(f"{path}: no answers to train or evaluate on")
        return examples

    def check_trainable(self, examples: Sequence[QAExample]) -> None:
        """Refuse training answers that are not at their answer_start, unless --relocate-answers was given."""
        if not self.settings.relocate_answers:
            for ex in examples:
                if ex.misplaced:
                    raise BertkitError(ex.misplaced)

    cut_questions = 0  # how many questions the last `features` call cut at max_query_length

    def long_inputs_note(self, total: int, source: str | Path | None) -> str | None:
        """A note on the questions the last `features` call cut (None when there were none)."""
        if not self.cut_questions:
            return None
        n = self.settings.max_query_length
        return (f"note: {self.cut_questions:,} of {total:,} questions in {source} are longer than max_query_length "
                f"{n} tokens: only their first {n} tokens are read")  # fmt: skip

    def labels(self, examples: Sequence[QAExample]) -> None:
        """No label set. Settles, from these training examples, whether the model may answer that there is no
        answer: whether any of them is unanswerable (a property of the model, never of the input it is given)."""
        self.settings.no_answer = any(ex.is_impossible for ex in examples)
        return None

    def echo(self, example: QAExample) -> dict:
        """The id and question (the passage is left out: long, and the same for many questions)."""
        return {"id": example.id, "question": example.question}

    def where(self, example: QAExample, path: str | Path) -> str:
        return f"question id {example.id!r} of {path}"

    def is_labelled(self, example: QAExample) -> bool:
        """Always: a question without answers is one the passage does not answer (SQuAD v2 data need not mark it
        is_impossible), and is scored as such."""
        return True

    def from_json(self, row: dict, n: int = 0) -> QAExample:
        """{"question", "context", "id" (optional)}."""
        return QAExample(str(row.get("id", n)), text_field(row, "question"), text_field(row, "context"))

    def features(
        self, examples: Sequence[QAExample], tok: Tokenizer, label2id: dict[str, int] | None, train: bool
    ) -> list[Feature]:
        """One `[CLS] question [SEP] window [SEP]` feature per window; `train` labels the answer, or [CLS]."""
        st = self.settings
        questions = tok.ids_batch([ex.question for ex in examples])
        contexts = tok.encode_with_offsets([ex.context for ex in examples])
        self.cut_questions = sum(len(q) > st.max_query_length for q in questions)  # passages are windowed, not cut
        out: list[Feature] = []
        for e, (ex, q, c) in enumerate(zip(examples, questions, contexts, strict=True)):
            q_ids = q[: st.max_query_length]
            room = st.max_seq_length - len(q_ids) - 3
            if room < 8:
                raise BertkitError(f"question {ex.id!r}: --max-seq-length {st.max_seq_length} leaves no room for text")
            located = [a for a in ex.answers if a[1] >= 0]  # start -1: kept for scoring only (--relocate-answers)
            if train and ex.answers and not located:
                continue  # answerable, but no answer text is in its passage: nothing to train on
            answer = located[0] if (train and located) else None
            start = 0
            while True:
                end = min(start + room, len(c.ids))
                head = [tok.cls_id, *q_ids, tok.sep_id]
                ids = head + c.ids[start:end] + [tok.sep_id]
                f: Feature = {
                    "input_ids": ids,
                    "token_type_ids": [0] * len(head) + [1] * (end - start + 1),
                    "example": e,
                    "context_start": len(head),
                    "window_start": start,  # in the context's tokens
                    "offsets": c.offsets[start:end],
                }
                if train:
                    f["start_positions"], f["end_positions"] = self._label(answer, c.offsets, start, end, len(head))
                out.append(f)
                if end >= len(c.ids):
                    break
                start += min(st.doc_stride, room)
        return out

    @staticmethod
    def _label(answer, offsets, start: int, end: int, shift: int) -> tuple[int, int]:
        """Token positions of the answer in this window, or (0, 0) ([CLS]) when it is not wholly inside."""
        if answer is None:
            return 0, 0
        text, s_char = answer
        e_char = s_char + len(text)
        toks = [i for i in range(start, end) if offsets[i][1] > s_char and offsets[i][0] < e_char]
        if not toks or offsets[toks[0]][0] > s_char or offsets[toks[-1]][1] < e_char:
            return 0, 0
        return toks[0] - start + shift, toks[-1] - start + shift

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")
        return {k: batch[k] for k in keys if k in batch}

    def _answers(self, run: Inference, examples: Sequence[QAExample], features: list[Feature]) -> list[dict]:
        """The best answer of each example, in order (by position: ids need not be unique in prediction input)."""
        st = self.settings
        logits = run.logits(self, features)
        with_null = bool(st.no_answer)
        best: dict[int, dict] = {}
        home = max_context_windows(features)
        for j, (f, lg) in enumerate(zip(features, logits, strict=True)):
            ex = examples[f["example"]]
            cs, n_ctx = f["context_start"], len(f["offsets"])
            start_l, end_l = lg[:, 0], lg[:, 1]
            null = float(start_l[0] + end_l[0])
            cur = best.setdefault(f["example"], {"text": "", "score": float("-inf"), "null": null})
            cur["null"] = min(cur["null"], null)
            ctx_start, ctx_end = start_l[cs : cs + n_ctx].clone(), end_l[cs : cs + n_ctx]
            # An answer starts only in the window where its first token has the most context (the original's rule):
            # near a window's edge the model sees half the passage around it, and its scores are less reliable.
            allowed = home[f["example"]][f["window_start"] : f["window_start"] + n_ctx] == j
            ctx_start[~torch.from_numpy(allowed)] = float("-inf")
            k = min(st.n_best, int(allowed.sum()))
            for s in ctx_start.topk(k).indices.tolist():
                for e in ctx_end.topk(k).indices.tolist():
                    if e < s or e - s + 1 > st.max_answer_length:
                        continue
                    score = float(ctx_start[s] + ctx_end[e])
                    if score > cur["score"]:
                        a, b = f["offsets"][s][0], with_marks(ex.context, f["offsets"][e][1])
                        cur.update(text=ex.context[a:b], score=score, start=a, end=b)
        out = []
        for e in range(len(examples)):
            cur = best.get(e, {"text": "", "score": float("-inf"), "null": 0.0})
            if with_null and cur["null"] > cur["score"]:
                cur = {"text": "", "score": cur["null"], "null": cur["null"]}
            out.append(cur)
        return out

    def evaluate(self, run: Inference, examples: Sequence[QAExample], features: list[Feature]) -> dict:
        """EM and F1 of the best span over all windows; CMRC 2018 scoring when most passages are Chinese."""
        answers = self._answers(run, examples, features)
        n_chinese = sum(contains_cjk(ex.context[:200], bmp_only=True) for ex in examples)
        lang = "zh" if n_chinese > len(examples) / 2 else "en"
        gold = {str(i): [t for t, _ in ex.answers] for i, ex in enumerate(examples)}
        scores = qa_scores({str(i): a["text"] for i, a in enumerate(answers)}, gold, lang)
        return {**scores, "questions": len(examples), "scoring": "cmrc2018" if lang == "zh" else "squad"}

    def predict(self, run: Inference, examples: Sequence[QAExample], features: list[Feature]) -> list[dict]:
        """Per question: the best span over all windows (empty if no-answer wins), its offsets and score; no span at
        all (e.g. every candidate longer than max_answer_length) gives an empty answer with score None."""
        answers = self._answers(run, examples, features)
        out = []
        for ex, a in zip(examples, answers, strict=True):
            score = a["score"] if math.isfinite(a["score"]) else None
            out.append({"id": ex.id, "answer": a["text"], "start": a.get("start"), "end": a.get("end"),
                        "score": score})  # fmt: skip
        return out


def max_context_windows(features: Sequence[Feature]) -> dict[int, np.ndarray]:
    """For each example, the index (into `features`) of the window in which each context token has the most
    context, as the original BERT's `run_squad.py` decides it: the window maximising min(tokens left of it, tokens
    right of it) + 0.01 x window length, the earliest on a tie."""
    windows: dict[int, list[tuple[int, int, int]]] = {}
    for j, f in enumerate(features):
        windows.setdefault(f["example"], []).append((j, f["window_start"], len(f["offsets"])))
    home: dict[int, np.ndarray] = {}
    for e, spans in windows.items():
        length = max(start + n for _, start, n in spans)
        score, owner = np.full(length, -np.inf), np.full(length, -1)
        for j, start, n in spans:
            i = np.arange(n)
            window_score = np.minimum(i, n - 1 - i) + 0.01 * n
            better = window_score > score[start : start + n]
            score[start : start + n][better] = window_score[better]
            owner[start : start + n][better] = j
        home[e] = owner
    return home
