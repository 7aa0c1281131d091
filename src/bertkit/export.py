"""`bertkit export`: a model directory -> one ONNX file, checked against the PyTorch model before it is kept.

The graph takes `input_ids`, `token_type_ids`, `attention_mask` (int64, (batch, sequence), both dynamic) and gives
the outputs `transformers` names: `logits` (cls, pair, ner), `start_logits` / `end_logits` (qa),
`prediction_logits` / `seq_relationship_logits` (a pre-trained model with its heads; the second only when the
directory has an NSP head), or `last_hidden_state` / `pooler_output` (an encoder; the second only with a pooler).
The task and labels go into the file's metadata (`bertkit_task`, `id2label`). Tokenize with the model directory's
tokenizer (tokenizer.json), as for the PyTorch model.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertkit.checkpoint import tensor_names
from bertkit.constants import ONNX_OPSET
from bertkit.errors import BertkitError
from bertkit.files import atomic_write
from bertkit.tasks.model_dir import open_model_dir
from bertkit.tasks.registry import TASKS
from bertkit.tokenizer import Tokenizer

INPUTS = ["input_ids", "token_type_ids", "attention_mask"]
SAMPLE = [  # a pair of different lengths, so that the check covers padding and both segments
    ("今天天气很好，我们去公园散步吧。", "好的，下午三点见。"),
    ("The quick brown fox jumps over the lazy dog.", None),
    ("北京是中华人民共和国的首都。", None),
]


class _Graph(nn.Module):
    """The model with plain tensor outputs, in the order `names` lists them; `per_token` names the (B, T, ...) ones.

    `kind` is "encoder", "pretraining", "mlm", or a task model's `export_kind`."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind
        encoder = model.bert if hasattr(model, "bert") else model
        self.task = next((t for t in TASKS.values() if t.export_kind == kind), None)
        pooled = ["pooler_output"] if encoder.pooler is not None else []
        self.names = list(self.task.onnx_outputs) if self.task is not None else {
            "encoder": ["last_hidden_state", *pooled],
            "pretraining": ["prediction_logits", "seq_relationship_logits"],
            "mlm": ["prediction_logits"],
        }[kind]  # fmt: skip
        self.per_token = {"last_hidden_state", "prediction_logits"}
        if self.task is not None and self.task.per_token:
            self.per_token.update(self.names)

    def forward(self, input_ids, token_type_ids, attention_mask) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, token_type_ids, attention_mask)
        if self.kind == "encoder":
            return tuple(t for t in (out.last_hidden_state, out.pooler_output) if t is not None)
        if self.kind in ("pretraining", "mlm"):
            return (out.mlm_logits, out.nsp_logits)[: len(self.names)]
        if len(self.names) > 1:  # several outputs in the logits' last dimension, e.g. QA's start and end: (B, T) each
            return tuple(out.logits[..., i] for i in range(len(self.names)))
        return (out.logits,)


def load_for_export(model_dir: str | Path) -> tuple[nn.Module, str, dict]:
    """(model in eval mode, kind, metadata) of a model directory: a task model, a pre-trained one, or an encoder.

    Only heads whose weights are in the directory are exported: an HF BertForMaskedLM gives prediction_logits alone,
    an encoder saved without its pooler gives last_hidden_state alone (never freshly initialised outputs)."""
    opened = open_model_dir(model_dir, "cpu")
    if opened.task_model is not None:
        tm = opened.task_model
        kind = tm.task.export_kind
        meta = {"bertkit_task": tm.task.name, "id2label": json.dumps({str(k): v for k, v in tm.id2label.items()})}
    elif opened.mlm is not None:
        nsp = any(n.startswith("cls.seq_relationship.") for n in tensor_names(opened.path))
        kind = "pretraining" if nsp else "mlm"
        meta = {"bertkit_task": kind}
    else:
        kind, meta = "encoder", {"bertkit_task": "encoder"}
    return opened.model.eval(), kind, meta


def sample_inputs(tok: Tokenizer, which: slice = slice(None)) -> dict[str, torch.Tensor]:
    """A small padded batch of SAMPLE[which] for tracing and for checking the exported graph."""
    return tok.pad([tok.encode(a, b, max_length=64) for a, b in SAMPLE[which]])


def export_onnx(model_dir: str | Path, out: str | Path, opset: int = ONNX_OPSET, check: bool = True) -> dict:
    """Write `out` (ONNX) from `model_dir`; with `check`, run it in onnxruntime on a sample batch and refuse to keep
    it unless its outputs equal the PyTorch model's (max abs difference on real tokens <= 1e-4). Returns a summary."""
    try:
        import onnx
        import onnxscript  # noqa: F401 (torch's ONNX exporter needs it)
    except ImportError as e:
        raise BertkitError(f"ONNX export needs onnx and onnxscript: pip install 'bertkit[export]' ({e})") from None
    if not hasattr(torch.compiler, "is_exporting"):
        raise BertkitError(f"bertkit export needs torch >= 2.7 (this is {torch.__version__})")
    model, kind, meta = load_for_export(model_dir)
    tok = Tokenizer.from_pretrained(model_dir)
    graph = _Graph(model, kind)
    inputs = sample_inputs(tok)
    args = tuple(inputs[k] for k in INPUTS)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" per op
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
            program = torch.onnx.export(
                graph, args, input_names=INPUTS, output_names=graph.names, opset_version=opset, dynamo=True,
                dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUTS), verbose=False,
            )  # fmt: skip
        proto = program.model_proto
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)
        if check:  # the tracing batch, and one of another size and length (no pair): the axes must be dynamic
            summary["max_abs_diff"] = check_onnx(tmp, graph, [inputs, sample_inputs(tok, slice(2, 3))])

    summary: dict = {"out": str(out), "kind": kind, "outputs": graph.names, "opset": opset, **meta}
    atomic_write(out, write)
    summary["bytes"] = out.stat().st_size
    return summary


def check_onnx(
    path: str | Path, graph: _Graph, batches: list[dict[str, torch.Tensor]], tolerance: float = 1e-4
) -> float:
    """Max abs difference between onnxruntime and PyTorch outputs on the real tokens of `batches`; an error above
    `tolerance` (padding positions are don't-cares: bertkit leaves them zero, the graph computes them)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BertkitError("checking the export needs onnxruntime: pip install 'bertkit[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for inputs in batches:
        got = session.run(None, {k: inputs[k].numpy() for k in INPUTS})
        with torch.no_grad():
            expected = [t.numpy() for t in graph(*(inputs[k] for k in INPUTS))]
        real = inputs["attention_mask"].numpy().astype(bool)  # (B, T)
        for name, g, e in zip(graph.names, got, expected, strict=True):
            if g.shape != e.shape:
                raise BertkitError(f"exported output {name} has shape {g.shape}, the model's {e.shape}")
            keep = real if name in graph.per_token else np.ones(g.shape[:1], dtype=bool)
            diff = np.abs(g[keep] - e[keep])
            if not np.isfinite(diff).all():
                raise BertkitError(f"exported output {name} is not finite where the model's is (or the reverse)")
            worst = max(worst, float(diff.max()))
    if worst > tolerance:
        raise BertkitError(f"the exported graph differs from the model by {worst:.2e} (> {tolerance}); not written")
    return worst
