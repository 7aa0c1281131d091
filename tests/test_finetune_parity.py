"""Fine-tuning parity with transformers: same initial weights (MiniLM + the same fresh head), same batches, same
optimiser, dropout off -> the same training losses for 30 steps (QA: 20, of longer inputs) (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from helpers import train_both
from realdata import tsv_rows

from bertkit import Tokenizer
from bertkit.model import BertForQuestionAnswering, BertForSequenceClassification
from bertkit.tasks.base import pad_batch
from bertkit.tasks.qa import QaTask
from bertkit.tasks.settings import TaskSettings

STEPS = 30
QA_STEPS = 20  # 128-token windows: each step costs several of the classifier's
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def test_classification_training_matches_transformers(tmp_path: Path, minilm_dir: Path, data_dir: Path) -> None:
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2, **NO_DROPOUT)
    ref.save_pretrained(tmp_path)  # the same fresh head goes into both models
    ours = BertForSequenceClassification.from_pretrained(tmp_path)
    tok = Tokenizer.from_pretrained(minilm_dir)
    rows = tsv_rows(data_dir / "sst2/train.tsv")[: STEPS * 8]
    batches = []
    for s in range(STEPS):
        chunk = rows[s * 8 : (s + 1) * 8]
        b = tok.batch([r["text"] for r in chunk], max_length=128)
        b["labels"] = torch.tensor([int(r["label"]) for r in chunk])
        batches.append(b)
    losses = train_both(ours, ref, batches, lr=5e-5)
    worst = max(abs(a - b) for a, b in losses)
    assert worst <= 1e-4, losses
    assert sum(a for a, _ in losses[-10:]) < sum(a for a, _ in losses[:10])  # it learns


def test_qa_training_matches_transformers(tmp_path: Path, minilm_dir: Path, data_dir: Path) -> None:
    torch.manual_seed(0)
    ref = transformers.BertForQuestionAnswering.from_pretrained(minilm_dir, **NO_DROPOUT)
    ref.save_pretrained(tmp_path)
    ours = BertForQuestionAnswering.from_pretrained(tmp_path)
    tok = Tokenizer.from_pretrained(minilm_dir)
    task = QaTask(TaskSettings(max_seq_length=128, doc_stride=48))
    examples = task.read(data_dir / "squad_v1.1/dev-v1.1.json")[:400]
    features = [f for f in task.features(examples, tok, None, train=True) if f["start_positions"] > 0]
    assert len(features) >= QA_STEPS * 4
    batches = []
    for s in range(QA_STEPS):
        b = pad_batch(features[s * 4 : (s + 1) * 4], tok.pad_id, ("start_positions", "end_positions"))
        batches.append(task.model_inputs(b))
    losses = train_both(ours, ref, batches, lr=5e-5)
    worst = max(abs(a - b) for a, b in losses)
    assert worst <= 1e-4, losses
    assert sum(a for a, _ in losses[-10:]) < sum(a for a, _ in losses[:10])


@pytest.mark.parametrize("arch", ["BertForSequenceClassification", "BertForTokenClassification",
                                  "BertForQuestionAnswering"])  # fmt: skip
def test_task_models_load_in_transformers_with_same_outputs(tmp_path: Path, arch: str) -> None:
    import bertkit.model as bm
    from bertkit import BertConfig

    config = BertConfig.preset("tiny", vocab_size=300)
    if not arch.endswith("Answering"):  # transformers sizes qa_outputs by num_labels (2, the default)
        config.extra["id2label"] = {"0": "O", "1": "B-PER", "2": "I-PER"}
        config.extra["label2id"] = {"O": 0, "B-PER": 1, "I-PER": 2}
    torch.manual_seed(0)
    ours = getattr(bm, arch)(config).eval()
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, arch).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(5, 300, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        a = ours(ids, None, mask).logits
        r = ref.eval()(input_ids=ids, attention_mask=mask)
    b = torch.stack([r.start_logits, r.end_logits], -1) if arch.endswith("Answering") else r.logits
    keep = mask.bool() if a.dim() == 3 else torch.ones(2, dtype=torch.bool)
    assert (a - b).abs()[keep].max() <= 1e-5
