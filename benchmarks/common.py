"""What every benchmark shares: where the real data is, where results go, and the machine they were measured on.

Each benchmark runs as `python benchmarks/NAME.py` from any folder. Python puts the script's own folder first on
the import path, so the scripts import this module as `common` with no path set-up of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bertkit.machine import describe

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def shared_data_dir() -> Path:
    """The shared real data sets: `$BERTKIT_DATA`, else the `shared/data` folder beside the checkout (where the
    tests look too)."""
    env = os.environ.get("BERTKIT_DATA")
    return Path(env) if env else HERE.parent.parent / "shared" / "data"


DATA = shared_data_dir()


def run_bertkit(*args: str, log: Path | None = None, quiet: bool = False) -> str:
    """Run `bertkit ARGS` in a new process (this Python, `-m bertkit.cli`) and return its standard output when
    `quiet` (captured, nothing shown). Otherwise the command is shown first and its output goes to the terminal, or
    with its errors into the file `log`. A failure raises RuntimeError with the end of its errors (or the log)."""
    cmd = [sys.executable, "-m", "bertkit.cli", *args]
    if not quiet:
        print("$ bertkit", " ".join(args), flush=True)
    if log is not None:
        with open(log, "w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
        said, errors = "", f"see {log}"
    else:
        done = subprocess.run(cmd, capture_output=quiet, text=True)
        said, errors = (done.stdout, done.stderr[-3000:]) if quiet else ("", "its errors are above")
    if done.returncode != 0:
        raise RuntimeError(f"bertkit {' '.join(args[:1])} exited {done.returncode}: {errors}")
    return said


def write_result(path: str | Path, result: dict) -> Path:
    """Write `result` to `path` as indented JSON (UTF-8, Chinese kept readable) with the machine it was measured
    on under "machine" (bertkit.machine.describe, and transformers' version where it was loaded), and return the
    path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result["machine"] = describe()
    if "transformers" in sys.modules:  # the reference a benchmark compared against: its version matters
        result["machine"]["transformers"] = sys.modules["transformers"].__version__
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
