"""`python -m experiments NAME`, run from the repository root: reproduce one of the BERT paper's claims at small
scale and write its report (markdown, JSON, PNG) and the index into docs/experiments/."""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from bertkit.errors import BertkitError
from experiments import REPORTS, WORKSPACE
from experiments.claims import EXPERIMENTS
from experiments.index import write_index
from experiments.workspace import SCALES, TASK_LABEL, Workspace, default_data_dir

PROG = "python -m experiments"


def build_parser() -> argparse.ArgumentParser:
    """The command line; --help lists every claim with its tasks and comparison."""
    indent = " " * 16
    claims = "\n".join(
        f"  {name:14s}{', '.join(TASK_LABEL[t] for t in claim.tasks)}\n"
        + textwrap.fill(claim.setup, 110, initial_indent=indent, subsequent_indent=indent)
        for name, claim in EXPERIMENTS.items()
    )
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce one of the BERT paper's claims at small scale (run from the repository root) and write "
        "its report\n(markdown, JSON, PNG) and the index into docs/experiments/. Pre-training arms and fine-tuning "
        "runs are cached\nin --work and shared between claims; a re-run only does what is missing.",
        epilog=f"claims (tasks, then the comparison):\n{claims}\n  {'all':14s}every claim, one after another",
    )
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], help="the claim to reproduce (listed below)")
    p.add_argument("--scale", choices=list(SCALES), default="default", help="test: a seconds-long smoke run")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; test 2)")
    p.add_argument("--work", default=str(WORKSPACE), metavar="DIR", help=f"cached arms and runs (default {WORKSPACE})")
    p.add_argument("--reports", default=None, metavar="DIR", help=f"default {REPORTS} (test scale: .../test)")
    p.add_argument("--data", default=None, metavar="DIR", help="the shared data sets (default $BERTKIT_DATA, else "
                   "shared/data beside the checkout); without them the pair and QA tasks are skipped")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> None:
    """Run the chosen claims into the workspace, writing each report and the index as soon as it is done."""
    if args.seeds is not None and args.seeds < 1:
        raise BertkitError(f"--seeds {args.seeds}: give at least 1")
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    scale = SCALES[args.scale] if args.seeds is None else replace(SCALES[args.scale], seeds=args.seeds)
    data = Path(args.data) if args.data else default_data_dir()
    if data is not None and not (data / "lcqmc").is_dir():
        raise BertkitError(f"--data {data}: no lcqmc/ folder there; point it at the shared data folder")
    if data is None:
        print("shared data sets not found (--data / $BERTKIT_DATA): the pair and QA tasks are skipped")
    ws = Workspace(Path(args.work), scale, data, progress=not args.quiet)
    reports = Path(args.reports) if args.reports else REPORTS / ("" if args.scale == "default" else args.scale)
    for name in names:
        path = EXPERIMENTS[name](ws).write(reports)
        write_index(reports, list(EXPERIMENTS))
        print(f"\n{name}: report written to {path}")
        verdicts = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("- ") and "**" in ln]
        print("\n".join(verdicts))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line message for a user's mistake)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except BertkitError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (finished arms and runs are kept; run it again to continue)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
