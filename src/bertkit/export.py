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
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bertkit.checkpoint import model_fingerprint, tensor_names
from bertkit.constants import MIN_ONNX_OPSET, ONNX_OPSET, QUANTIZATIONS
from bertkit.errors import BertkitError
from bertkit.files import atomic_write
from bertkit.onnx_model import FINGERPRINT_KEY, INPUTS, PRECISION_KEY, open_session
from bertkit.tasks.model_dir import open_model_dir
from bertkit.tasks.registry import TASKS
from bertkit.tokenizer import Tokenizer

SAMPLE = [  # a pair of different lengths, so that the check covers padding and both segments
    ("今天天气很好，我们去公园散步吧。", "好的，下午三点见。"),
    ("The quick brown fox jumps over the lazy dog.", None),
    ("北京是中华人民共和国的首都。", None),
]
# The sentences an int8 model is checked on against the fp32 one: everyday Chinese and English of the kinds bertkit's
# tasks see (reviews, news, questions, names and places), from 4 to about 60 tokens, written for this check.
CHECK_TEXTS = (
    "这家酒店的位置很好，离地铁站只有五分钟。",
    "房间有点小，但是很干净，服务员也很热情。",
    "早餐种类太少了，而且都是凉的，不推荐。",
    "空调一直在响，整晚都没有睡好。",
    "性价比很高，下次出差还会住这里。",
    "前台办理入住花了四十分钟，让人非常失望。",
    "这本书写得很感人，我一口气就读完了。",
    "物流很快，包装也很仔细，手机没有任何划痕。",
    "电池用了不到一个月就鼓包了，客服也不理人。",
    "屏幕显示效果一般，不过价格便宜，可以接受。",
    "服务一般。",
    "太棒了！",
    "国务院总理在北京会见了来访的法国外交部长。",
    "中国人民银行宣布下调存款准备金率零点五个百分点。",
    "上海市将于明年开通三条新的地铁线路。",
    "张伟毕业于清华大学计算机系，现任阿里巴巴高级工程师。",
    "李娜在二零一一年获得法国网球公开赛女子单打冠军。",
    "长江是中国最长的河流，全长约六千三百公里。",
    "今天天气很好，我们不得不取消户外运动吗？",
    "明天下午三点在会议室讨论新产品的发布计划。",
    "请问从火车站到故宫博物院应该怎么走？",
    "他说这部电影的结局完全出乎意料。",
    "孩子们在公园里放风筝，笑声传得很远。",
    "这家餐厅的麻婆豆腐做得很地道，就是有点咸。",
    "由于大雾天气，首都机场多个航班延误。",
    "研究人员发现，每天步行三十分钟有助于降低血压。",
    "我想退货，但是商家说已经超过了七天。",
    "故事情节拖沓，演员的表演也很生硬。",
    "鲁迅原名周树人，是中国现代文学的奠基人之一。",
    "深圳的科技公司越来越多，吸引了大量年轻人。",
    "这次考试的题目比去年难多了。",
    "杭州西湖的风景一年四季都很美。",
    "The quick brown fox jumps over the lazy dog.",
    "The film is a charming, funny and deeply moving story about growing up.",
    "A tedious, overlong mess that never finds its footing.",
    "The acting is superb, but the script lets everyone down.",
    "I have never been so bored in a cinema in my life.",
    "An intelligent thriller with a twist you will not see coming.",
    "It is neither as clever nor as funny as it thinks it is.",
    "Beautifully shot and wonderfully acted.",
    "Terrible.",
    "What a delight!",
    "The hotel room was clean, quiet and close to the station.",
    "The battery died after two days and support never answered my emails.",
    "Barack Obama was born in Honolulu, Hawaii, in 1961.",
    "Apple reported record revenue for the quarter ending in September.",
    "The European Central Bank kept interest rates unchanged on Thursday.",
    "Marie Curie was the first woman to win a Nobel Prize.",
    "The Amazon is the largest rainforest in the world.",
    "Where is the nearest train station from the city centre?",
    "When did the Second World War end in Europe?",
    "She moved to London in 2015 to study medicine at King's College.",
    "The meeting has been moved to Friday afternoon because of the holiday.",
    "Heavy rain caused flooding in several towns along the river.",
    "Scientists have found that regular exercise improves sleep quality.",
    "The restaurant was crowded, the food was cold, and the waiter was rude.",
    "My daughter loved the book and asked me to read it again every night.",
    "The new update made the app slower and the interface harder to use.",
    "The museum holds more than two million objects from around the world.",
    "He scored twice in the second half to win the match for his team.",
    "The price is fair for what you get, though the design feels dated.",
    "Although the first hour drags, the ending is powerful and well earned.",
    "Shakespeare wrote Hamlet at the beginning of the seventeenth century.",
    "Please send the signed contract back to us by the end of the week.",
)
# The least agreement of an int8 model with its fp32 model on CHECK_TEXTS that is kept: predicted labels (class,
# tag, span start and end, masked-LM token), the correlation of a regression's scores, or the median cosine of an
# encoder's mean-pooled vectors. int8 moves logits a little, so labels whose fp32 scores are nearly tied may flip;
# 95% allows 3 flips in 64 sentences and refuses a model that changes its answers more often than that (the
# quantized model's accuracy on a labelled dev set is the final word: run bertkit evaluate on it).
MIN_INT8_AGREEMENT = 0.95


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


class Exportable(NamedTuple):
    """What `export_onnx` reads from a model directory."""

    model: nn.Module  # in eval mode
    kind: str  # a task's `export_kind`, "pretraining", "mlm" or "encoder"
    metadata: dict[str, str]  # written into the ONNX file's metadata_props
    tokenizer: Tokenizer  # for the sample inputs and the check sentences


def load_for_export(model_dir: str | Path) -> Exportable:
    """The model (eval mode), kind, metadata and tokenizer of a model directory: a task model, a pre-trained one,
    or an encoder.

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
    meta[FINGERPRINT_KEY] = model_fingerprint(opened.path)
    return Exportable(opened.model.eval(), kind, meta, opened.tokenizer)


def sample_inputs(tok: Tokenizer, which: slice = slice(None)) -> dict[str, torch.Tensor]:
    """A small padded batch of SAMPLE[which] for tracing and for checking the exported graph."""
    return tok.pad([tok.encode(a, b, max_length=64) for a, b in SAMPLE[which]])


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    opset: int = ONNX_OPSET,
    check: bool = True,
    quantize: str | None = None,
    texts: Sequence[str] = CHECK_TEXTS,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> dict:
    """Write `out` (ONNX) from `model_dir`; with `check`, run it in onnxruntime on a sample batch and refuse to keep
    it unless its outputs equal the PyTorch model's (max abs difference on real tokens <= 1e-4). Returns a summary.

    With `quantize="int8"`, `out` is the fp32 graph dynamically quantized (int8 weights, activations quantized at
    run time), kept only if it agrees with the fp32 graph on `texts` (see `check_quantized`; always checked). The
    fp32 graph is written to a temporary folder and removed."""
    if opset < MIN_ONNX_OPSET:
        raise BertkitError(f"--opset {opset}: the exported encoder needs opset {MIN_ONNX_OPSET} or later (LayerNorm)")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise BertkitError(f"quantize {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if quantize is not None and not [t for t in texts if t.strip()]:
        raise BertkitError("checking the int8 model needs at least one non-empty sentence; none was given")
    try:
        import onnx
        import onnxscript  # noqa: F401 (torch's ONNX exporter needs it)
    except ImportError as e:
        raise BertkitError(f"ONNX export needs onnx and onnxscript: pip install 'bertkit[export]' ({e})") from None
    if not hasattr(torch.compiler, "is_exporting"):
        raise BertkitError(f"bertkit export needs torch >= 2.7 (this is {torch.__version__})")
    model, kind, meta, tok = load_for_export(model_dir)
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
            try:
                program = torch.onnx.export(
                    graph, args, input_names=list(INPUTS), output_names=graph.names, opset_version=opset,
                    dynamo=True, dynamic_shapes=tuple({0: batch, 1: seq} for _ in INPUTS), verbose=False,
                )  # fmt: skip
            except Exception as e:  # the exporter wraps a Ctrl-C in its own error: it is still an interrupt
                if _interrupted(e):
                    raise KeyboardInterrupt from None
                raise
        proto = program.model_proto
        written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if written != opset:  # the exporter converts to another opset where it can, and says so only in its log
            raise BertkitError(f"torch's exporter wrote opset {written}, not --opset {opset}; use --opset {written}")
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        if quantize is None:
            onnx.save(proto, tmp)
            if check:  # the tracing batch, and one of another size and length (no pair): the axes must be dynamic
                summary["max_abs_diff"] = check_onnx(tmp, graph, [inputs, sample_inputs(tok, slice(2, 3))])
            return
        with tempfile.TemporaryDirectory(prefix="bertkit-export-") as folder:
            fp32 = Path(folder) / "fp32.onnx"
            onnx.save(proto, fp32)
            if check:
                summary["max_abs_diff"] = check_onnx(fp32, graph, [inputs, sample_inputs(tok, slice(2, 3))])
            quantize_int8(fp32, tmp)
            summary.update(check_quantized(fp32, tmp, graph, tok, texts, min_agreement))

    meta[PRECISION_KEY] = quantize or "fp32"
    summary: dict = {"out": str(out), "kind": kind, "outputs": graph.names, "opset": opset, **meta}
    if quantize is not None:
        summary["quantize"] = quantize
    atomic_write(out, write)
    summary["bytes"] = out.stat().st_size
    return summary


def _interrupted(e: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `e`."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


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


def quantize_int8(fp32: str | Path, out: str | Path) -> None:
    """Write `out`: the ONNX file `fp32` dynamically quantized by onnxruntime (int8 weights of the matrix
    multiplications with a scale per output channel, activations quantized per batch at run time), with `fp32`'s
    metadata (task, labels)."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise BertkitError("int8 quantization needs onnxruntime: pip install 'bertkit[export]'") from None
    root = logging.getLogger()
    advice = logging.Filter("bertkit.no-such-logger")  # drops every record: the quantizer's advice to pre-process
    root.addFilter(advice)
    try:  # one scale per output channel: on MiniLM, sentence vectors stay far closer to fp32 than with one per tensor
        quantize_dynamic(Path(fp32), Path(out), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(advice)
    source, quantized = onnx.load(str(fp32), load_external_data=False), onnx.load(str(out))
    kept = {p.key for p in quantized.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in kept:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(quantized, str(out))


def _run_session(session, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return session.run(None, {k: batch[k].numpy() for k in INPUTS})


def _agreement(name: str, graph: _Graph, fp32: np.ndarray, int8: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-item agreement of one output on one batch: 1.0/0.0 for each predicted label (a class per row, a tag or
    masked-LM token per real token, a span start or end per row), or the cosine of each row's mean-pooled vector
    (an encoder's last_hidden_state). Empty for outputs that predict nothing on their own (pooler_output, NSP)."""
    if name == "last_hidden_state":
        mask = real[..., None].astype(np.float64)
        a, b = (fp32 * mask).sum(1), (int8 * mask).sum(1)  # mean pooling: the count cancels out in the cosine
        return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    if name in graph.per_token and fp32.ndim == 2:  # (B, T), one score per token (a span's start): its argmax
        hide = np.where(real, 0.0, -np.inf)
        return (np.argmax(fp32 + hide, -1) == np.argmax(int8 + hide, -1)).astype(np.float64)
    if name in ("pooler_output", "seq_relationship_logits"):
        return np.zeros(0)
    labels_a, labels_b = np.argmax(fp32, -1), np.argmax(int8, -1)
    keep = real if name in graph.per_token else np.ones(fp32.shape[:1], dtype=bool)
    return (labels_a[keep] == labels_b[keep]).astype(np.float64)


def check_quantized(
    fp32: str | Path,
    int8: str | Path,
    graph: _Graph,
    tok: Tokenizer,
    texts: Sequence[str] = CHECK_TEXTS,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> dict:
    """Run the fp32 and int8 graphs on `texts` (one sentence each) and SAMPLE's pair, and compare them: the max abs
    difference of every output on real tokens, and the agreement that says whether the int8 model answers the same
    (predicted labels; the correlation of a regression's scores; the median cosine of an encoder's mean-pooled
    vectors, with the minimum also reported). A BertkitError when the agreement is below `min_agreement` or an
    output is not finite. Returns the summary entries `int8_*`."""
    sessions = open_session(fp32), open_session(int8)
    rows = [tok.encode(t, max_length=128) for t in texts if t.strip()]
    batches = [tok.pad(rows[s : s + 16]) for s in range(0, len(rows), 16)] + [sample_inputs(tok, slice(0, 1))]
    worst, scores = 0.0, {name: [] for name in graph.names}
    regression = graph.task is not None and graph.task.head == "value"
    for batch in batches:
        real = batch["attention_mask"].numpy().astype(bool)
        for name, a, b in zip(graph.names, *(_run_session(s, batch) for s in sessions), strict=True):
            if not np.isfinite(b).all():
                raise BertkitError(f"the int8 model's {name} is not finite on a check sentence; not written")
            keep = real if name in graph.per_token else np.ones(a.shape[:1], dtype=bool)
            worst = max(worst, float(np.abs(a[keep] - b[keep]).max()))
            scores[name].append(np.stack([a[:, 0], b[:, 0]]) if regression else _agreement(name, graph, a, b, real))
    summary: dict = {"int8_max_abs_diff": worst, "int8_check_texts": len(rows)}
    if regression:
        pairs = np.concatenate(scores["logits"], axis=1)
        agreement, what = float(np.corrcoef(pairs)[0, 1]), "the correlation of its scores"
    elif graph.kind == "encoder":
        cosines = np.concatenate(scores["last_hidden_state"])
        summary["int8_cosine_min"] = float(cosines.min())
        summary["int8_cosine_median"] = float(np.median(cosines))
        agreement, what = summary["int8_cosine_median"], "the median cosine of its sentence vectors"
    else:
        agreement = float(np.concatenate([np.concatenate(v) for v in scores.values() if v]).mean())
        what = "its predicted labels"
    summary["int8_agreement"], summary["int8_agreement_of"] = agreement, what
    if not agreement >= min_agreement:
        raise BertkitError(
            f"the int8 model agrees with the fp32 model by {agreement:.3f} ({what}, {len(rows)} check sentences; "
            f"max abs diff {worst:.2e}), below {min_agreement}: int8 is not advisable for this model; not written "
            "(export it without --quantize)"
        )
    return summary
