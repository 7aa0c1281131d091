"""Why NSP keeps a small masked LM on its plateau: the tiny model pre-trained with NSP at several weights and clips.

    python -m experiments.nsp_plateau [--work runs/nsp_plateau] [--arms mlm_nsp,nsp_w0.1,...]   (repository root)

Same data (the experiments' default workspace: People's Daily 1998-01 + unlabelled reviews), same tiny model, same
seed, steps and learning rate as the claims (`python -m experiments`, Scale "default"); the arms differ only in the
NSP loss weight and the gradient-clipping norm. Each arm is judged by its held-out accuracy on [MASK]ed tokens
against the floor of always guessing the commonest token. Each arm is an experiments `Arm` pre-trained by
`Workspace.pretrain` in a workspace under --work (a finished arm is read, not re-run). Writes
benchmarks/results/nsp_plateau.json (each arm's curve, the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from bertkit.machine import describe
from experiments import REPO
from experiments.workspace import SCALES, Arm, Workspace

RESULTS = REPO / "benchmarks" / "results" / "nsp_plateau.json"
# The arms differ only in the NSP loss weight and the gradient-clipping norm (inf: no clipping).
ARMS = {
    arm.name: arm
    for arm in (
        Arm("mlm_only", nsp=False),
        Arm("mlm_nsp", nsp_weight=1.0),  # the paper's recipe
        Arm("nsp_w0.1", nsp_weight=0.1),
        Arm("nsp_noclip", nsp_weight=1.0, max_grad_norm=math.inf),
    )
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work", default=str(REPO / "runs" / "nsp_plateau"), help="the workspace: data and one run folder per arm"
    )
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    names = [a for a in args.arms.split(",") if a]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    scale = SCALES["default"]
    ws = Workspace(Path(args.work), scale)
    t0 = time.perf_counter()
    curves = {}
    for name in names:
        ws.pretrain(ARMS[name])
        curves[name] = ws.pretrain_evals(ARMS[name])
    result = {
        "benchmark": "nsp_plateau",
        "data": str(ws.prepared()),
        "scale": f"experiments default: {scale.preset}, {scale.pretrain_steps} steps x {scale.pretrain_batch}, "
        f"lr {scale.pretrain_lr:g}, init std {scale.init_range}, dropout 0, seed 0",
        "arms": {
            n: {
                "nsp_weight": ARMS[n].loss_nsp_weight,
                "max_grad_norm": str(ARMS[n].max_grad_norm),
                "heldout": curves[n],
            }
            for n in names
        },
        "final": {
            n: {k: curves[n][-1].get(k) for k in ("masked_accuracy", "masked_majority", "mlm_loss", "nsp_accuracy")}
            for n in names
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": describe(),
    }
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    for n in names:
        f = result["final"][n]
        print(
            f"{n:12s} masked acc {f['masked_accuracy']:.3f} (floor {f['masked_majority']:.3f})  "
            f"MLM loss {f['mlm_loss']:.2f}  NSP acc {f['nsp_accuracy']}"
        )
    print(f"-> {args.results}")


if __name__ == "__main__":
    main()
