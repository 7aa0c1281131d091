"""Files a user gave or will keep: output directories, JSON files that may be damaged, a full disk.

Every command that writes a directory (`vocab`, `prepare`, `pretrain`, `finetune`) goes through
`claim_output_dir` before it writes anything:
- an output that equals or contains one of the command's inputs is refused (writing there could replace the very
  files being read, or a later `--overwrite` could remove them);
- a folder is the command's own only by the owner mark it leaves there, or by a file only that command writes,
  never by common names such as `config.json` or `training/`;
- a non-empty directory is refused unless it is the command's own, being resumed, or the user passed
  `--overwrite`; even then only the command's own entries are replaced, never anything else that lies there.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from bertkit.errors import BertkitError


def no_such_path(path: str | Path) -> str:
    """Say that `path` does not exist, and suggest a near name beside it (a typo such as 'modle' for 'model')."""
    path = Path(path)
    parent = path.parent if path.parent.is_dir() else None
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1) if parent else []
    hint = f"; did you mean {parent / near[0]}?" if parent and near else "; check the path"
    return f"{path} does not exist{hint}"


def read_json(path: str | Path, remedy: str) -> Any:
    """The JSON value in the file `path`; one that cannot be read or parsed is one line naming it, saying where it
    broke and what to do (`remedy`, e.g. "copy the model directory again")."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BertkitError(f"{path}: not valid UTF-8 at byte {e.start}; {remedy}") from None
    except OSError as e:
        raise BertkitError(f"{path}: cannot read it ({e.strerror}); {remedy}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BertkitError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {remedy}") from None


def read_json_object(path: str | Path, remedy: str, what: str = "a JSON object") -> dict:
    """`read_json` of a file that must hold an object {...} (settings, a record, a manifest)."""
    value = read_json(path, remedy)
    if not isinstance(value, dict):
        raise BertkitError(f"{path}: expected {what}, found {type(value).__name__}; {remedy}")
    return value


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def check_output_not_input(out: str | Path, inputs: Iterable[str | Path], flag: str = "--out") -> None:
    """Refuse an output path that equals an input or is a folder holding one (e.g. `--out` = `--model`, or the
    folder of the corpus being read)."""
    target = _resolved(out)
    for given in inputs:
        source = _resolved(given)
        if source == target or source.is_relative_to(target):
            relation = "is" if source == target else "contains"
            raise BertkitError(
                f"{flag} {out} {relation} the input {given}: writing there could replace what is being read; "
                "choose another output directory"
            )


def own_entries(out: Path, owns: Sequence[str]) -> list[Path]:
    """The entries directly in `out` whose names match one of the glob patterns in `owns`."""
    return sorted(p for p in out.iterdir() if any(fnmatch(p.name, pattern) for pattern in owns))


def remove_entries(entries: Iterable[Path]) -> None:
    """Delete files and folders (only those given)."""
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


# Written into every output directory a command claims: {"command": ...}. It is how a command knows a folder as
# its own (to resume it, or to replace its files with --overwrite), since file names alone (config.json, model/,
# metrics.jsonl) are common to many programs.
OWNER_FILE = ".bertkit-output"


def output_owner(path: str | Path) -> str | None:
    """The command that claimed the directory `path` (its owner mark), or None."""
    try:
        record = json.loads((Path(path) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("command") if isinstance(record, dict) else None


def claim_output_dir(
    out: str | Path,
    owns: Sequence[str],
    *,
    command: str,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    resume: bool | None = None,
    is_own_output: bool = False,
    replace_later: bool = False,
    what: str = "output",
) -> Path:
    """Make `out` safe to write `command`'s output into, and mark it as that command's; returns it as a Path
    (created if missing).

    The directory is the command's own when it carries the command's owner mark, or when the caller recognised it
    by a file that only this command writes (`is_own_output`, e.g. a checkpoint's training state). `owns`: glob
    patterns of the entries the command writes directly in `out`. Refuses, with one line naming the directory and
    the flag to use: an output equal to or containing an input; a path that is a file; a non-empty directory that
    is not its own (with --overwrite too, when it holds an entry of one of the command's names: that file is not
    the command's to replace); its own unless `resume` (None: the command cannot resume) or `overwrite`. With
    `overwrite` on its own directory the entries in `owns` are removed now, unless `replace_later` (the caller
    replaces them once its new output is complete).
    """
    path = Path(out)
    check_output_not_input(path, inputs)
    if path.exists() and not path.is_dir():
        raise BertkitError(f"--out {path} is a file, not a directory: choose a directory")
    if not path.is_dir():
        path.mkdir(parents=True)
    entries = [p for p in path.iterdir() if p.name != OWNER_FILE or output_owner(path) != command]
    own = is_own_output or output_owner(path) == command
    if entries and not (resume and own):
        if not overwrite and own:
            hint = "pass --resume to continue it, " if resume is False else ""
            raise BertkitError(
                f"{path} already holds a {what}: {hint}pass --overwrite to replace it, or choose a new --out"
            )
        if not overwrite:
            example = min((p.name for p in entries), key=lambda name: (name.startswith("."), name))  # a visible one
            raise BertkitError(
                f"{path} is not empty ({len(entries)} entries, e.g. {example!r}) and was not written by bertkit "
                f"{command}: choose a new or empty --out (--overwrite would replace only a {what} of its own)"
            )
        clashes = [] if own else own_entries(path, owns)
        if clashes:
            raise BertkitError(
                f"{path} holds {clashes[0].name!r}, which bertkit {command} did not write there: --overwrite replaces "
                f"only a {what} of its own; choose another --out, or move that entry away first"
            )
        if not replace_later:
            remove_entries(own_entries(path, owns))
    text = json.dumps({"command": command}) + "\n"
    (path / OWNER_FILE).write_text(text, encoding="utf-8")
    return path


def release_output_dir(out: str | Path, owns: Sequence[str], created: bool) -> None:
    """Undo a claim after a run failed before it left anything to keep: remove the command's own entries and its
    owner mark, and `out` itself when the run created it and it is empty now. Nothing else is touched."""
    path = Path(out)
    if not path.is_dir():
        return
    remove_entries(own_entries(path, owns))
    (path / OWNER_FILE).unlink(missing_ok=True)
    if created and not any(path.iterdir()):
        path.rmdir()


# Below this much free space, a failed write is taken for a full disk: numpy and torch report a short write
# without its errno, and safetensors only in its message.
_NEARLY_FULL_BYTES = 1 << 20


def is_disk_full(error: BaseException, folder: str | Path | None = None) -> bool:
    """Whether a failed write failed for want of space: an ENOSPC/EDQUOT `OSError` anywhere in the exception's
    chain (torch.save reports a short write as a RuntimeError whose context is the OSError), the text safetensors
    puts in its message, or, given the `folder` written to, less than 1 MiB left there."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(e) for s in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        e = e.__cause__ or e.__context__
    if folder is None:
        return False
    try:
        fs = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    free_blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail  # root may also fill the reserved blocks
    return free_blocks * fs.f_frsize < _NEARLY_FULL_BYTES


@contextmanager
def disk_full_as_error(path: str | Path, then: str = "free some space, then run again") -> Iterator[None]:
    """Turn a full disk while writing under `path` into one line: "disk full at PATH: ...". Other errors pass."""
    try:
        yield
    except BertkitError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise BertkitError(f"disk full at {path}: {then}") from None
