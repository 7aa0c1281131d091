"""Plain helpers shared by the test modules (fixtures live in conftest.py).

Running the `bertkit` command: most tests call the `bertkit` fixture of conftest.py, which runs `bertkit.cli.main`
in the test's own process (no interpreter start-up, no second import of torch). `run_bertkit` runs it as a real
`python -m bertkit.cli` process, for what only a process shows: kill -9, torchrun, standard input, a fresh
interpreter. Both return a `CliResult`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bertkit.train.optim import linear_schedule, param_groups

# `python -m bertkit.cli` with this interpreter (the checkout's venv), whatever `bertkit` is on the PATH.
BERTKIT_COMMAND = (sys.executable, "-m", "bertkit.cli")


@dataclass
class CliResult:
    """What one `bertkit` command did: its exit status and what it printed."""

    status: int
    out: str
    err: str

    def __iter__(self):
        """Unpacks as `status, out, err`."""
        return iter((self.status, self.out, self.err))

    def last_json(self) -> dict:
        """The last line of standard output as JSON (the commands print their summary there, for scripts)."""
        return json.loads(self.out.strip().splitlines()[-1])


def run_in_process(*argv: str | Path, capsys: pytest.CaptureFixture | None = None) -> CliResult:
    """`bertkit ARGV` through `bertkit.cli.main` in this process, its output read through `capsys` (a test's), or,
    without one (in a module or session fixture), through standard output and error redirected for the call. A
    SystemExit (argparse refusing a flag, --version) is its exit status, as the console script makes it; any other
    exception propagates and fails the test, where a process would have printed a traceback. Only what this command
    printed is in the result."""
    from bertkit.cli import main

    def call() -> int:
        try:
            return main([str(a) for a in argv])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)

    if capsys is None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = call()
        return CliResult(status, out.getvalue(), err.getvalue())
    capsys.readouterr()
    status = call()
    captured = capsys.readouterr()
    return CliResult(status, captured.out, captured.err)


def bertkit_command(*argv: str | Path, processes: int = 1) -> list[str]:
    """The command line of `bertkit ARGV` as a process, under torchrun (CPU, standalone) when `processes` > 1: for
    `subprocess.Popen` where a test must watch or kill the process while it runs."""
    if processes == 1:
        return [*BERTKIT_COMMAND, *map(str, argv)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*torchrun, *BERTKIT_COMMAND[1:], *map(str, argv)]


def start_bertkit(*argv: str | Path) -> subprocess.Popen:
    """`bertkit ARGV` started as a process, its output piped, for a test that interrupts it (see `interrupt`).
    PYTHONFAULTHANDLER makes it print every thread's Python stack should it be aborted."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(bertkit_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def interrupt(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Send Ctrl-C (SIGINT) to `proc`, a `start_bertkit` process, and return its standard error once it has ended.
    One still running `timeout` seconds later is aborted (SIGABRT), and the test fails with the stacks it prints:
    a process that hangs after Ctrl-C says where."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"still running {timeout:.0f} s after Ctrl-C; its standard error and stacks:\n{err[-8000:]}")


def run_bertkit(
    *argv: str | Path,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    processes: int = 1,
) -> CliResult:
    """`bertkit ARGV` as a separate process (see `bertkit_command`), waiting for it to end; `stdin` is its standard
    input, `env` its whole environment (default: this process's)."""
    r = subprocess.run(bertkit_command(*argv, processes=processes), input=stdin, env=env, timeout=timeout,
                       capture_output=True, text=True)  # fmt: skip
    return CliResult(r.returncode, r.stdout, r.stderr)


def training_leftovers(folder: Path) -> list[str]:
    """The temporary files and folders a training run writes before renaming them into place (`.tmp-*`, `*.tmp`)
    anywhere under `folder`: none may remain after a run ends, however it ended."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp"))


def hf_param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """transformers' Trainer decay groups: no decay on biases and LayerNorm weights."""
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def train_both(ours, ref, batches, lr: float) -> list[tuple[float, float]]:
    """bertkit's model and transformers' trained side by side on the same batches (AdamW with each library's
    decay groups, linear schedule with 5 warm-up steps, gradients clipped at 1): both losses at each step. Also run on
    a GPU by benchmarks/cuda_checks.py."""
    opts = [
        torch.optim.AdamW(param_groups(ours, 0.01), lr=lr, eps=1e-6),
        torch.optim.AdamW(hf_param_groups(ref, 0.01), lr=lr, eps=1e-6),
    ]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, linear_schedule(5, len(batches))) for o in opts]
    ours.train()
    ref.train()
    losses = []
    for batch in batches:
        pair = []
        for model, opt, sched in zip((ours, ref), opts, scheds, strict=True):
            opt.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            pair.append(loss.item())
        losses.append(tuple(pair))
    return losses


def onednn_kernels_run(script: str, folder: Path, timeout: float = 300) -> list[str]:
    """The oneDNN kernels ("primitive,exec" lines of ONEDNN_VERBOSE) that Python `script` runs in a fresh process
    (written to `folder`); the script must end by printing "done"."""
    path = folder / "onednn_script.py"
    path.write_text(script)
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "done" in run.stdout
    return [line for line in run.stdout.splitlines() if "primitive,exec" in line]
