"""`bertkit export --format onnx`: the ONNX graph, run in onnxruntime, gives transformers' outputs on the same
weights and inputs (padding and both segments included), at batch sizes and lengths other than the traced ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from bertkit import Tokenizer
from bertkit.errors import BertkitError
from bertkit.export import (
    CHECK_TEXTS,
    MIN_INT8_AGREEMENT,
    _Graph,
    check_onnx,
    export_onnx,
    load_for_export,
    sample_inputs,
)
from bertkit.onnx_model import OnnxModel

TEXTS = [
    ("这家酒店的位置很好，离地铁站只有五分钟。", "房间有点小，但是很干净。"),
    ("服务一般。", None),
    ("A man is playing a guitar on the street, and a small crowd has gathered to listen.", None),
    ("北京是中华人民共和国的首都。", "北京是哪个国家的首都？"),
]


def _run(path: Path, hf_tok) -> tuple[list[np.ndarray], dict]:
    a = [t for t, _ in TEXTS]
    b = [t or "" for _, t in TEXTS]
    enc = hf_tok(a, b, return_tensors="pt", padding=True, return_token_type_ids=True)
    # A lone text has no segment B: encode those rows again without one, padded to the same length.
    for i, (_, second) in enumerate(TEXTS):
        if second is None:
            single = hf_tok(a[i], return_tensors="pt", padding="max_length", max_length=enc["input_ids"].shape[1])
            for k in enc:
                enc[k][i] = single[k][0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: enc[k].numpy().astype(np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    return session.run(None, feeds), enc


def _close_on_real_tokens(got: np.ndarray, want: torch.Tensor, mask: torch.Tensor, tol: float = 1e-4) -> None:
    want_np = want.detach().numpy()
    keep = mask.numpy().astype(bool) if got.ndim >= 2 and got.shape[:2] == tuple(mask.shape) else slice(None)
    assert got.shape == want_np.shape
    assert np.abs(got[keep] - want_np[keep]).max() < tol


def test_encoder_export_matches_transformers(tmp_path: Path, minilm_dir: Path) -> None:
    out = tmp_path / "minilm.onnx"
    summary = export_onnx(minilm_dir, out)
    assert summary["outputs"] == ["last_hidden_state", "pooler_output"] and summary["max_abs_diff"] < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    (hidden, pooled), enc = _run(out, hf_tok)
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = ref(**enc)
    _close_on_real_tokens(hidden, want.last_hidden_state, enc["attention_mask"])
    _close_on_real_tokens(pooled, want.pooler_output, enc["attention_mask"])
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["bertkit_task"] == "encoder"


def test_task_exports_match_transformers(tmp_path: Path, tiny_task_models: dict[str, Path]) -> None:
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_task_models["cls"])

    summary = export_onnx(tiny_task_models["cls"], tmp_path / "cls.onnx")
    assert summary["outputs"] == ["logits"] and json.loads(summary["id2label"]) == {"0": "0", "1": "1"}
    (logits,), enc = _run(tmp_path / "cls.onnx", hf_tok)
    with torch.no_grad():
        want = transformers.BertForSequenceClassification.from_pretrained(tiny_task_models["cls"]).eval()(**enc).logits
    _close_on_real_tokens(logits, want, enc["attention_mask"])

    summary = export_onnx(tiny_task_models["ner"], tmp_path / "ner.onnx")  # per-token logits (B, T, labels)
    (logits,), enc = _run(tmp_path / "ner.onnx", hf_tok)
    with torch.no_grad():
        want = transformers.BertForTokenClassification.from_pretrained(tiny_task_models["ner"]).eval()(**enc).logits
    assert logits.ndim == 3
    _close_on_real_tokens(logits, want, enc["attention_mask"])

    summary = export_onnx(tiny_task_models["qa"], tmp_path / "qa.onnx")
    assert summary["outputs"] == ["start_logits", "end_logits"]
    (start, end), enc = _run(tmp_path / "qa.onnx", hf_tok)
    with torch.no_grad():
        want = transformers.BertForQuestionAnswering.from_pretrained(tiny_task_models["qa"]).eval()(**enc)
    _close_on_real_tokens(start, want.start_logits, enc["attention_mask"])
    _close_on_real_tokens(end, want.end_logits, enc["attention_mask"])

    summary = export_onnx(tiny_task_models["pretrained"], tmp_path / "pt.onnx")
    (mlm, nsp), enc = _run(tmp_path / "pt.onnx", hf_tok)
    with torch.no_grad():
        want = transformers.BertForPreTraining.from_pretrained(tiny_task_models["pretrained"]).eval()(**enc)
    _close_on_real_tokens(mlm, want.prediction_logits, enc["attention_mask"])
    _close_on_real_tokens(nsp, want.seq_relationship_logits, enc["attention_mask"])


def test_only_heads_in_the_directory_are_exported(tmp_path: Path, tiny_task_models: dict[str, Path]) -> None:
    """An HF BertForMaskedLM has no NSP head and no pooler: exporting it must not invent them from random weights."""
    tok = Tokenizer.from_pretrained(tiny_task_models["pretrained"])
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    summary = export_onnx(tmp_path / "mlm", tmp_path / "mlm.onnx")
    assert summary["outputs"] == ["prediction_logits"] and summary["bertkit_task"] == "mlm"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "mlm")
    (mlm,), enc = _run(tmp_path / "mlm.onnx", hf_tok)
    with torch.no_grad():
        want = transformers.BertForMaskedLM.from_pretrained(tmp_path / "mlm").eval()(**enc).logits
    _close_on_real_tokens(mlm, want, enc["attention_mask"])


def test_the_check_rejects_a_graph_that_differs(tmp_path: Path, tiny_task_models: dict[str, Path]) -> None:
    out = tmp_path / "cls.onnx"
    export_onnx(tiny_task_models["cls"], out)
    model, kind, _, _ = load_for_export(tiny_task_models["cls"])
    graph = _Graph(model, kind)
    batch = sample_inputs(Tokenizer.from_pretrained(tiny_task_models["cls"]))
    assert check_onnx(out, graph, [batch]) < 1e-4
    with torch.no_grad():
        model.classifier.bias[0] += 1e-3  # a change well above float error, far below a visible one
    with pytest.raises(BertkitError, match="differs from the model"):
        check_onnx(out, graph, [batch])


def test_a_failed_check_keeps_what_was_there(
    tmp_path: Path, tiny_task_models: dict[str, Path], monkeypatch, bertkit
) -> None:
    out = tmp_path / "cls.onnx"
    out.write_bytes(b"an earlier export")

    def differs(*args, **kwargs):
        raise BertkitError("the exported graph differs from the model by 1.0e+00 (> 0.0001); not written")

    monkeypatch.setattr("bertkit.export.check_onnx", differs)
    with pytest.raises(BertkitError, match="differs"):
        export_onnx(tiny_task_models["cls"], out)
    assert out.read_bytes() == b"an earlier export" and list(tmp_path.iterdir()) == [out]  # no temporary left

    r = bertkit("export", "--model", tmp_path / "missing", "--out", out, "--overwrite")
    assert r.status == 2 and "does not exist" in r.err


def test_int8_export_is_checked_against_fp32_and_kept(
    tmp_path: Path, tiny_task_models: dict[str, Path], bertkit
) -> None:
    """`--quantize int8` writes a dynamically quantized graph whose labels agree with the fp32 graph's on the 64
    check sentences; the summary and the printed line say by how much. Nothing else is left in the folder."""
    out = tmp_path / "cls.int8.onnx"
    r = bertkit("export", "--model", tiny_task_models["cls"], "--out", out, "--quantize", "int8")
    assert r.status == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["quantize"] == "int8" and summary["int8_check_texts"] == len(CHECK_TEXTS) == 64
    assert (
        1.0 >= summary["int8_agreement"] >= MIN_INT8_AGREEMENT
        and summary["int8_agreement_of"] == "its predicted labels"
    )
    assert 0 < summary["int8_max_abs_diff"] < 1 and summary["max_abs_diff"] < 1e-4  # fp32 still checked vs PyTorch
    assert (
        f"int8 checked against fp32 on 64 sentences: its predicted labels agree by {summary['int8_agreement']:.3f}"
        in r.out
    )
    proto = onnx.load(str(out))
    assert "MatMulInteger" in {n.op_type for n in proto.graph.node}  # the matrix products run in int8
    assert OnnxModel(out).precision == "int8"  # what /api/info reports (it said fp32)
    assert {p.key: p.value for p in proto.metadata_props}["bertkit_task"] == "cls"
    assert list(tmp_path.iterdir()) == [out]

    texts = tmp_path / "texts.txt"  # the check sentences can be the user's own
    texts.write_text("服务很好。\n\n房间太小了。\n", encoding="utf-8")
    r = bertkit("export", "--model", tiny_task_models["ner"], "--out", tmp_path / "ner.onnx", "--quantize", "int8",
                "--check-texts", texts)  # fmt: skip
    assert r.status == 0, r.err
    summary = json.loads(r.out.splitlines()[-1])
    assert summary["int8_check_texts"] == 2 and summary["int8_agreement"] >= MIN_INT8_AGREEMENT
    texts.write_text("\n  \n", encoding="utf-8")
    r = bertkit("export", "--model", tiny_task_models["ner"], "--out", tmp_path / "ner2.onnx", "--quantize", "int8",
                "--check-texts", texts)  # fmt: skip
    assert r.status == 2 and "no sentence in it" in r.err and not (tmp_path / "ner2.onnx").exists()


def test_a_broken_quantization_is_refused(
    tmp_path: Path, tiny_task_models: dict[str, Path], monkeypatch, bertkit
) -> None:
    """A quantizer that swaps the two classes' weights (every label flips) is caught by the check against fp32:
    one-line error, no output and no temporary file or folder left."""
    from bertkit import export

    real_quantize = export.quantize_int8

    def swapped_classes(fp32, out) -> None:
        proto = onnx.load(str(fp32))
        for init in proto.graph.initializer:
            if init.name in ("model.classifier.weight", "model.classifier.bias"):
                flipped = onnx.numpy_helper.to_array(init)[::-1].copy()
                init.CopyFrom(onnx.numpy_helper.from_array(flipped, init.name))
        flipped_file = Path(fp32).with_name("flipped.onnx")  # beside fp32, in the export's temporary folder
        onnx.save(proto, str(flipped_file))
        real_quantize(flipped_file, out)

    monkeypatch.setattr("bertkit.export.quantize_int8", swapped_classes)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    out = tmp_path / "models" / "cls.int8.onnx"
    r = bertkit("export", "--model", tiny_task_models["cls"], "--out", out, "--quantize", "int8")
    assert r.status == 2 and len(r.err.strip().splitlines()) == 1
    assert "int8 model agrees with the fp32 model by 0.0" in r.err and "not written" in r.err
    assert list((tmp_path / "models").iterdir()) == [] and list(scratch.iterdir()) == []

    with pytest.raises(BertkitError, match="expected one of int8"):
        export_onnx(tiny_task_models["cls"], out, quantize="int4")
