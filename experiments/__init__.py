"""The BERT paper's claims reproduced at small scale on real data, and a study built on the same pre-training arms.

Not part of the installed bertkit package: run from the repository root, with bertkit's `experiments` extra
installed (gensim, scikit-learn, matplotlib):

    .venv/bin/python -m experiments --help              # the claims, what each measures, the options
    .venv/bin/python -m experiments nsp                 # one claim (or `all`): report in docs/experiments/
    .venv/bin/python -m experiments.nsp_plateau         # NSP's loss weight: benchmarks/results/nsp_plateau.json

Paths are found from this folder, never from the working directory: the workspace of cached pre-training arms
and fine-tuning runs in runs/experiments/, the reports in docs/experiments/, the shared data sets (LCQMC,
CMRC 2018) in `$BERTKIT_DATA`, else in shared/data beside the checkout.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "docs" / "experiments"
WORKSPACE = REPO / "runs" / "experiments"
