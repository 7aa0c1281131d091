"""The ONNX runner (bertkit.onnx_model): an exported model run by onnxruntime answers as the PyTorch model does,
through the same `predict`, `embed` and `fill_mask` code.

Tolerance: 1e-4 absolute on logits, hidden states and probabilities, the bound `bertkit export` itself checks the
graph against. Both sides compute in float32 on the CPU, but with different kernels, fusions and summation orders,
so their results differ by float rounding (about 1e-6 here), never exactly equal; labels and answers must be
identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import Tokenizer
from bertkit.errors import BertkitError
from bertkit.export import export_onnx
from bertkit.infer import embed, fill_mask
from bertkit.model import BertForPreTraining
from bertkit.onnx_model import OnnxModel, open_onnx_model_dir
from bertkit.tasks.model_dir import open_model_dir

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_task_models: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    """(model directory, its ONNX export) for the tiny cls, ner, qa and pre-trained models and a tiny encoder."""
    root = tmp_path_factory.mktemp("onnx_runner")
    encoder = root / "encoder"
    BertForPreTraining.from_pretrained(tiny_task_models["pretrained"]).bert.save_pretrained(encoder)
    Tokenizer.from_pretrained(tiny_task_models["pretrained"]).save_pretrained(encoder)
    dirs = {**{k: tiny_task_models[k] for k in ("cls", "ner", "qa", "pretrained")}, "encoder": encoder}
    out = {}
    for name, directory in dirs.items():
        export_onnx(directory, root / f"{name}.onnx", check=False)  # the export's own check is tested elsewhere
        out[name] = (directory, root / f"{name}.onnx")
    return out


@pytest.fixture(scope="module")
def reviews(data_dir: Path) -> list[str]:
    """24 real ChnSentiCorp dev reviews, of many lengths (so batches are padded), cut to 120 characters."""
    rows = (data_dir / "chnsenticorp/dev.tsv").read_text(encoding="utf-8").splitlines()[1:25]
    return [r.split("\t")[0][:120] for r in rows]


def _close(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    assert got.shape == want.shape and got.dtype == torch.float32
    keep = mask.bool() if mask is not None and got.dim() >= 2 and got.shape[:2] == mask.shape else slice(None)
    assert (got[keep] - want[keep]).abs().max().item() < TOL


def test_the_runner_answers_as_the_torch_model(exported, reviews: list[str]) -> None:
    """Called like the PyTorch model, the runner gives its outputs under its names, on a padded batch with pairs."""
    for name in ("cls", "ner", "qa", "pretrained", "encoder"):
        directory, onnx_file = exported[name]
        torch_model = open_model_dir(directory, "cpu").model.eval()
        onnx_model = OnnxModel(onnx_file, threads=1)
        tok = Tokenizer.from_pretrained(directory)
        batch = tok.pad([tok.encode(a, b, max_length=96) for a, b in zip(reviews, [None, *reviews[:-1]], strict=True)])
        with torch.inference_mode():
            want = torch_model(**batch)
            got = onnx_model(**batch)
        mask = batch["attention_mask"]
        if name == "encoder":
            _close(got.last_hidden_state, want.last_hidden_state, mask)
            _close(got.pooler_output, want.pooler_output)
        elif name == "pretrained":
            _close(got.mlm_logits, want.mlm_logits, mask)
            _close(got.nsp_logits, want.nsp_logits)
            assert got.prediction_logits is got.mlm_logits
        else:
            _close(got.logits, want.logits, mask)
            assert (got.logits.argmax(-1)[mask.bool() if name != "cls" else slice(None)] ==
                    want.logits.argmax(-1)[mask.bool() if name != "cls" else slice(None)]).all()  # fmt: skip
        if name == "qa":  # the export's own names, and the (B, T, 2) logits the QA task reads
            _close(got.start_logits, want.logits[..., 0], mask)
            _close(got.end_logits, want.logits[..., 1], mask)


def test_predict_through_onnx_equals_torch(exported, reviews: list[str]) -> None:
    """`task.predict` on the ONNX model: the same labels, tags and spans; probabilities within TOL."""
    inputs = {
        "cls": [{"text": t} for t in reviews],
        "ner": [{"text": t} for t in reviews],
        "qa": [{"question": "这家酒店怎么样？", "context": t} for t in reviews],
    }
    for name, rows in inputs.items():
        directory, onnx_file = exported[name]
        torch_task = open_model_dir(directory, "cpu").task_model
        onnx_task = open_onnx_model_dir(directory, onnx_file, threads=1).task_model
        assert isinstance(onnx_task.model, OnnxModel)
        examples = [torch_task.task.from_json(r, n) for n, r in enumerate(rows, start=1)]
        want, got = torch_task.predict(examples), onnx_task.predict(examples)
        for w, g in zip(want, got, strict=True):
            numbers = {k for k, v in w.items() if isinstance(v, float)}
            assert {k: v for k, v in g.items() if k not in numbers | {"probabilities"}} == {
                k: v for k, v in w.items() if k not in numbers | {"probabilities"}
            }
            for k in numbers:
                assert abs(g[k] - w[k]) < TOL
            for label, p in w.get("probabilities", {}).items():
                assert abs(g["probabilities"][label] - p) < TOL


def test_embed_and_fill_mask_through_onnx_equal_torch(exported, reviews: list[str]) -> None:
    directory, onnx_file = exported["encoder"]
    opened, onnx_opened = open_model_dir(directory, "cpu"), open_onnx_model_dir(directory, onnx_file, threads=1)
    assert isinstance(onnx_opened.encoder, OnnxModel) and onnx_opened.kind == "encoder"
    want = embed(opened.encoder, opened.tokenizer, reviews, batch_size=8)
    got = embed(onnx_opened.encoder, onnx_opened.tokenizer, reviews, batch_size=8)
    assert got.shape == want.shape and np.abs(got - want).max() < TOL

    directory, onnx_file = exported["pretrained"]
    opened, onnx_opened = open_model_dir(directory, "cpu"), open_onnx_model_dir(directory, onnx_file)
    assert isinstance(onnx_opened.mlm, OnnxModel) and onnx_opened.kind == "pretrained"
    text = "今天天气很[MASK]，我们不得不取消户外运动。"
    want_masks, got_masks = (
        fill_mask(opened.mlm, opened.tokenizer, text),
        fill_mask(onnx_opened.mlm, opened.tokenizer, text),
    )
    for w, g in zip(want_masks, got_masks, strict=True):
        assert [t for t, _ in g] == [t for t, _ in w]
        assert max(abs(p - q) for (_, p), (_, q) in zip(w, g, strict=True)) < TOL


def test_the_runner_refuses_what_it_cannot_do(exported, tmp_path: Path) -> None:
    onnx_file = exported["cls"][1]
    model = OnnxModel(onnx_file, threads=2)
    assert model.session.get_session_options().intra_op_num_threads == 2
    assert model.eval() is model and model.train(False) is model and not model.training
    assert next(model.parameters()).device == torch.device("cpu") and model.id2label == {0: "0", 1: "1"}
    with pytest.raises(BertkitError, match="cannot be trained"):
        model.train()
    with pytest.raises(BertkitError, match="runs on the CPU"):
        model.to("cuda")
    with pytest.raises(BertkitError, match="positive number"):
        OnnxModel(onnx_file, threads=0)
    with pytest.raises(BertkitError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BertkitError, match="cannot load it as a model"):
        OnnxModel(tmp_path / "junk.onnx")
    # A file exported from another directory would answer with the wrong head or labels: refused, naming both.
    with pytest.raises(BertkitError, match=r"exported from a cls model.*ner model") as refused:
        open_onnx_model_dir(exported["ner"][0], onnx_file)
    # What it suggests writes a file of the ner model's own, not over the cls model's export.
    fresh = onnx_file.with_name(f"{Path(exported['ner'][0]).resolve().name}.onnx")
    assert f"--out {fresh})" in str(refused.value) and fresh != onnx_file
    with pytest.raises(BertkitError, match=r"exported from a encoder model"):
        open_onnx_model_dir(exported["pretrained"][0], exported["encoder"][1])
    with pytest.raises(BertkitError, match="an ONNX model runs on the CPU; --device cuda is for the PyTorch"):
        open_onnx_model_dir(exported["cls"][0], onnx_file, device="cuda")
    assert json.loads(json.dumps(model.id2label)) == {"0": "0", "1": "1"}
    # The same kind of model with the same labels and sizes, but other weights (here: the directory fine-tuned
    # again since the export): accepted and run, its answers not the directory's. The export records a fingerprint.
    retrained = tmp_path / "retrained"
    shutil.copytree(exported["cls"][0], retrained)
    weights = load_file(retrained / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + 1.0
    save_file(weights, retrained / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BertkitError, match=r"other weights than .*retrained holds now.*--out .*retrained\.onnx"):
        open_onnx_model_dir(retrained, onnx_file)
    assert open_onnx_model_dir(exported["cls"][0], onnx_file).task_model is not None


def test_serve_backend_onnx_answers_as_torch(exported, reviews: list[str]) -> None:
    """`bertkit serve --backend onnx --onnx FILE`: the same answers over HTTP as the torch backend (labels equal,
    probabilities within 1e-4, the export's own check bound: other kernels, other float32 rounding)."""
    import httpx

    from bertkit.serve.server import open_service, running

    model_dir, onnx_file = exported["cls"]
    inputs = [{"text": t} for t in reviews[:6]]
    answers = {}
    for backend, onnx in (("torch", None), ("onnx", onnx_file)):
        with running(open_service(model_dir, "cpu", backend, onnx, threads=1)) as url:
            r = httpx.post(f"{url}/api/predict", json={"inputs": inputs}, timeout=60)
            assert r.status_code == 200, r.text
            answers[backend] = r.json()["predictions"]
            info = httpx.get(f"{url}/api/info", timeout=60).json()  # it said fp32 and nothing of the backend
            assert (info["backend"], info["precision"], info["onnx"]) == (
                (backend, "fp32", str(onnx) if onnx else None)
            )
            assert info["max_seq_length"] == open_model_dir(model_dir).task_model.task.settings.max_seq_length
    for got, want in zip(answers["onnx"], answers["torch"], strict=True):
        assert got["label"] == want["label"]
        assert max(abs(got["probabilities"][k] - p) for k, p in want["probabilities"].items()) <= 1e-4
    with pytest.raises(BertkitError, match="--backend onnx needs --onnx FILE"):
        open_service(model_dir, "cpu", "onnx")
    with pytest.raises(BertkitError, match="--onnx FILE is for --backend onnx"):
        open_service(model_dir, "cpu", "torch", onnx_file)
    with pytest.raises(BertkitError, match="runs on the CPU; --device cuda"):
        open_service(model_dir, "cuda", "onnx", onnx_file)
    # With several worker processes the parent refuses it too, before it says it is serving.
    from bertkit.serve.limits import ServeConfig
    from bertkit.serve.server import serve

    with pytest.raises(BertkitError, match="--backend onnx needs --onnx FILE"):
        serve(model_dir, ServeConfig(port=0, backend="onnx", workers=2))


def test_serve_backend_onnx_buckets_lengths_narrowly_and_leaves_torch_threads(exported) -> None:
    """An ONNX graph pads every input to its batch's longest, so its batches keep to narrow length buckets, while
    the same directory's PyTorch encoder (which unpads) may run wide ones; the model's thread count is
    onnxruntime's own, so the server does not fit PyTorch's to the load."""
    from bertkit.serve.batching import PADDED_SLACK, UNPADDED_SLACK
    from bertkit.serve.server import open_service

    model_dir, onnx_file = exported["cls"]
    for backend, onnx, predict_slack, fits_threads in (
        ("torch", None, UNPADDED_SLACK, True),
        ("onnx", onnx_file, PADDED_SLACK, False),
    ):
        service = open_service(model_dir, "cpu", backend, onnx, threads=1)
        try:
            # A classifier's directory has no masked-LM head: fill-mask's entry is the default, never used.
            assert service._slack == {"predict": predict_slack, "embed": UNPADDED_SLACK, "fill-mask": PADDED_SLACK}
            assert (service._elsewhere is not None) == fits_threads
        finally:
            service.close()


def test_evaluate_onnx_gives_the_torch_metrics(exported, data_dir: Path, tmp_path: Path, bertkit) -> None:
    """`bertkit evaluate --onnx FILE` judges an export on labelled data, as an int8 file is judged before it is
    served: on the same data it reports the PyTorch model's accuracy (labels are identical, see TOL), and it refuses
    what it cannot evaluate."""
    directory, onnx_file = exported["cls"]
    data = tmp_path / "dev.tsv"
    data.write_text("\n".join((data_dir / "chnsenticorp/dev.tsv").read_text("utf-8").splitlines()[:41]) + "\n", "utf-8")
    torch_run = bertkit("evaluate", "--model", directory, "--data", data)
    onnx_run = bertkit("evaluate", "--model", directory, "--data", data, "--onnx", onnx_file)
    assert torch_run.status == 0 and onnx_run.status == 0, onnx_run.err
    want, got = json.loads(torch_run.out.splitlines()[-1]), json.loads(onnx_run.out.splitlines()[-1])
    assert got["accuracy"] == want["accuracy"] and got["examples"] == want["examples"] == 40

    wrong_task = bertkit("evaluate", "--model", directory, "--data", data, "--onnx", onnx_file, "--task", "pair")
    assert wrong_task.status == 2 and "fine-tuned for (cls)" in wrong_task.err
    other_model = bertkit("evaluate", "--model", exported["ner"][0], "--data", data, "--onnx", onnx_file)
    assert other_model.status == 2 and "exported from a cls model" in other_model.err
