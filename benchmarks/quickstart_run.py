"""The main job, measured: `bertkit quickstart` from scratch, with its wall time and peak memory.

    python benchmarks/quickstart_run.py [--seed 0] [--budget 1.0] [--out runs/qs_seed0]

Runs the quickstart in a fresh folder as a child process (a folder with finished stages would be reused and the
time would not be that of a full run, so --out must not exist yet), then writes its results.json together with
the command, the wall time, the child's peak resident memory and the machine to
benchmarks/results/quickstart.json (seed 0) or quickstart_seed{N}.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="a folder that does not exist yet (default runs/qs_seedN)")
    ap.add_argument("--results", default=None, help="default benchmarks/results/quickstart[_seedN].json")
    args = ap.parse_args()
    out = Path(args.out or f"runs/qs_seed{args.seed}")
    if out.exists():
        sys.exit(f"{out} exists: a re-run would reuse its finished stages; choose a new --out")
    suffix = "" if args.seed == 0 else f"_seed{args.seed}"
    results = Path(args.results or RESULTS / f"quickstart{suffix}.json")
    cmd = [sys.executable, "-m", "bertkit.cli", "quickstart", "--out", str(out), "--seed", str(args.seed)]
    cmd += ["--budget", str(args.budget)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux: the largest child's peak
    summary = json.loads((out / "results.json").read_text(encoding="utf-8"))
    summary.update(
        command=f"bertkit quickstart --out {out} --seed {args.seed} --budget {args.budget:g}",
        wall_seconds=round(wall, 1),
        peak_rss_mib=peak_kib // 1024,
    )
    write_result(results, summary)
    print(f"{wall / 60:.1f} min, peak RSS {peak_kib // 1024} MiB -> {results}")


if __name__ == "__main__":
    main()
