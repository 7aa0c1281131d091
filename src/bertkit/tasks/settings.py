"""The task names and the settings kept with a fine-tuned model: light (no torch), so the CLI can offer them."""

from __future__ import annotations

from dataclasses import dataclass

from bertkit.options import POSITIVE, SEQ_LENGTH, check_values, option

# The families of bertkit.tasks.registry, in its order (it checks that they agree).
TASK_NAMES = ("cls", "pair", "regression", "multilabel", "ner", "qa")
# QA's default length, the original's SQuAD setting: room for a passage window beside the question (the other
# tasks default to TaskSettings.max_seq_length).
QA_MAX_SEQ_LENGTH = 384


@dataclass
class TaskSettings:
    """Task settings kept with the model: max sequence length; QA windows, query/answer lengths, n-best; whether a
    regression reads text pairs; a multi-label model's decision thresholds."""

    max_seq_length: int = option(
        128, type=SEQ_LENGTH, help="tokens per example, longer ones truncated (qa: with --doc-stride windows)"
    )
    doc_stride: int = option(
        128, type=POSITIVE,
        help="qa: tokens from one window's start to the next's over a long passage, as in the original BERT (not "
        "the overlap, which transformers' example scripts call doc_stride); an answer is read from the window "
        "where its first token has the most context",
    )  # fmt: skip
    long_inputs: str = option(
        "truncate", choices=("truncate", "window"),
        help="cls/pair/regression/multilabel/ner: an input longer than --max-seq-length is truncated (ner: cut into "
        "consecutive chunks), or read in overlapping windows --window-stride tokens apart (classification averages "
        "the windows' logits; ner takes each word's tag from the window where it sits most centrally)",
    )  # fmt: skip
    window_stride: int | None = option(
        None, type=POSITIVE, help="with --long-inputs window: tokens from one window's start to the next's (default: "
        "half a window)",
    )  # fmt: skip
    max_query_length: int = 64
    max_answer_length: int = option(30, type=POSITIVE, help="qa: in tokens")
    n_best: int = 20
    relocate_answers: bool = option(False, help="qa: fix answer_start to the text's position")
    crf: bool = option(
        False,
        help="ner: a CRF over the tags instead of one softmax per token: learned transition scores, Viterbi "
        "decoding that only gives valid BIO/BIOES sequences (its parameters are crf.* in model.safetensors)",
    )
    # Regression: True/False once its training data has shown whether inputs are pairs; None (a model from
    # elsewhere) reads a pair wherever the input has text_b.
    text_pair: bool | None = None
    # NER: True once its training sentences were tagged character by character (Chinese data), so that raw text is
    # cut into characters; False: white-space words, each CJK character a word of its own; None (a model from
    # elsewhere): characters when a text holds Chinese.
    char_words: bool | None = None
    # QA: True once its training data has held unanswerable questions (SQuAD 2.0), so that the model answers ""
    # where its no-answer score beats every span; False (or None, a model from elsewhere) always gives a span.
    no_answer: bool | None = None
    # Multi-label: the probability above which a label is predicted, per label, and one for all labels; chosen on
    # the dev set by fine-tuning (each maximises that label's F1, or the micro-F1 for the global one). None: 0.5.
    thresholds: dict[str, float] | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        check_values(self)
