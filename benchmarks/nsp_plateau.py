"""Why NSP keeps a small masked LM on its plateau: the tiny model pre-trained with NSP at several weights and clips.

    python benchmarks/nsp_plateau.py [--work runs/nsp_plateau] [--arms mlm_nsp,nsp_w0.1,...] [--data DIR]

Same data (the experiments' default workspace: People's Daily 1998-01 + unlabelled reviews), same tiny model, same
seed, steps and learning rate as `bertkit experiment` (Scale "default"); the arms differ only in the NSP loss weight
and the gradient-clipping norm. Each arm is judged by its held-out accuracy on [MASK]ed tokens against the floor of
always guessing the commonest token. Writes benchmarks/results/nsp_plateau.json (each arm's curve, the machine).
An arm whose run folder already holds a finished model is read, not re-run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from bertkit.data.masking import MaskingConfig
from bertkit.experiments.workspace import SCALES, Workspace
from bertkit.machine import describe
from bertkit.tasks.pretrain import PretrainConfig, run_pretrain
from bertkit.train.loop import TrainConfig, latest_checkpoint

HERE = Path(__file__).resolve().parent
# name -> (NSP loss weight, gradient-clipping max norm); inf switches clipping off.
ARMS = {
    "mlm_only": (0.0, 1.0),
    "mlm_nsp": (1.0, 1.0),  # the paper's recipe, as `bertkit experiment` runs it
    "nsp_w0.1": (0.1, 1.0),
    "nsp_noclip": (1.0, math.inf),
}


def run_arm(name: str, data: Path, work: Path) -> list[dict]:
    """Pre-train one arm (unless finished) and return its held-out evaluations."""
    s = SCALES["default"]
    nsp_weight, clip = ARMS[name]
    run = work / name
    if not (run / "model" / "model.safetensors").is_file():
        train = TrainConfig(
            out_dir=str(run), max_steps=s.pretrain_steps, batch_size=s.pretrain_batch, learning_rate=s.pretrain_lr,
            warmup_ratio=0.06, eval_every=s.pretrain_steps // s.evals, save_every=s.pretrain_steps // 3,
            log_every=25, seed=0, max_grad_norm=clip,
        )  # fmt: skip
        print(f"== {name}: NSP weight {nsp_weight}, clip {clip}", flush=True)
        run_pretrain(
            PretrainConfig(
                data=str(data), model=s.preset, train=train, masking=MaskingConfig(), nsp_weight=nsp_weight,
                eval_instances=1000, dropout=0.0, init_range=s.init_range,
                resume=latest_checkpoint(run) is not None, num_workers=0,
            )
        )  # fmt: skip
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("split") == "eval"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/nsp_plateau", help="one run folder per arm")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    ap.add_argument("--data", help="a prepared data folder; default: the experiments workspace's under --work")
    ap.add_argument("--results", default=str(HERE / "results" / "nsp_plateau.json"))
    args = ap.parse_args()
    work = Path(args.work)
    names = [a for a in args.arms.split(",") if a]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    data = Path(args.data) if args.data else Workspace(work / "workspace", SCALES["default"]).prepared()
    t0 = time.perf_counter()
    curves = {name: run_arm(name, data, work) for name in names}
    result = {
        "benchmark": "nsp_plateau",
        "data": str(data),
        "scale": "experiments default: tiny, 4000 steps x 32, lr 1e-3, init std 0.05, dropout 0, seed 0",
        "arms": {n: {"nsp_weight": ARMS[n][0], "max_grad_norm": str(ARMS[n][1]), "heldout": curves[n]} for n in names},
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
