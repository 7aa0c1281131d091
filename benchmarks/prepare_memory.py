"""Peak memory of `bertkit prepare` is flat in corpus size: the Chinese corpus vs. the same corpus 10 times.

    python benchmarks/prepare_memory.py [--workers 1]

Each prepare runs in its own process; its peak RSS is read from the kernel (ru_maxrss of the child).
Writes benchmarks/results/prepare_memory.json. Target: ratio under 1.5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, RESULTS, write_result


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one command run in a fresh child process."""
    code = (
        "import resource, subprocess, sys, time, json;"
        "t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL);"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t]))"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    rss, secs = json.loads(out)
    return rss, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    corpus = sorted((DATA / "pretrain_zh").glob("*.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x10 = tmp / "corpus_x10.txt"
        with x10.open("w", encoding="utf-8") as f:
            for _ in range(10):
                for p in corpus:
                    f.write(p.read_text(encoding="utf-8").rstrip("\n") + "\n\n")
        base = [sys.executable, "-m", "bertkit.cli"]
        subprocess.run([*base, "vocab", "--corpus", *map(str, corpus), "--vocab-size", "12000", "--out",
                        str(tmp / "tok")], check=True, capture_output=True)  # fmt: skip
        results = {}
        for name, files in (("x1", [str(p) for p in corpus]), ("x10", [str(x10)])):
            out = tmp / f"data_{name}"
            cmd = [*base, "prepare", "--corpus", *files, "--tokenizer", str(tmp / "tok"), "--out", str(out),
                   "--workers", str(args.workers)]  # fmt: skip
            rss, secs = peak_rss_of(cmd)
            manifest = json.loads((out / "manifest.json").read_text())
            tokens = manifest["splits"]["train"]["tokens"] + manifest["splits"]["eval"]["tokens"]
            results[name] = {
                "peak_rss_mib": round(rss, 1),
                "seconds": round(secs, 1),
                "tokens": tokens,
                "tokens_per_s_per_worker": round(tokens / manifest["seconds"] / args.workers),
            }
            print(name, results[name], flush=True)
    ratio = results["x10"]["peak_rss_mib"] / results["x1"]["peak_rss_mib"]
    report = {
        "benchmark": "prepare_memory",
        "corpus": "shared/data/pretrain_zh (all 5 files) and the same concatenated 10 times",
        "workers": args.workers,
        "runs": results,
        "peak_rss_ratio_x10_over_x1": round(ratio, 3),
        "target_ratio": 1.5,
        "met": ratio < 1.5,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_result(RESULTS / f"prepare_memory_w{args.workers}.json", report)
    print(f"peak RSS ratio x10/x1 = {ratio:.3f}")


if __name__ == "__main__":
    main()
