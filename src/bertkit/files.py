"""Files a user gave or will keep: text and JSON files that may be damaged, atomic writes, output directories and
run caches, a full disk. The one low module for reading and writing files (it imports nothing above errors).

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
import secrets
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, BinaryIO

from bertkit.errors import BertkitError


def no_such_path(path: str | Path) -> str:
    """Say that `path` does not exist, and suggest a near name beside it (a typo such as 'modle' for 'model'); or
    that it is no regular file, where it exists as something else."""
    path = Path(path)
    if is_special_file(path):
        return not_a_regular_file(path)
    parent = path.parent if path.parent.is_dir() else None
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1, cutoff=0.8) if parent else []
    hint = f"; did you mean {parent / near[0]}?" if parent and near else "; check the path."
    return f"{path} does not exist{hint}"


def model_directory(path: str | Path) -> Path:
    """`path` as a Path, when it is a folder; else a BertkitError saying what it is (missing, with a near name;
    a file, such as the config.json inside the folder meant)."""
    path = Path(path)
    if path.is_file():
        raise BertkitError(f"{path} is a file, not a model directory: give the folder that holds it ({path.parent})")
    if not path.is_dir():
        raise BertkitError(no_such_path(path))
    return path


def make_model_directory(path: str | Path) -> Path:
    """`path` made a folder to save a model or tokenizer into (with its parents); a file there is a BertkitError
    (it was pathlib's FileExistsError)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BertkitError(f"{path} is a file: a model directory is a folder; give another path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_special_file(path: str | Path) -> bool:
    """Whether `path` is a pipe (the shell's `<(...)`), a socket or a device."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def not_a_regular_file(path: str | Path) -> str:
    """Say that `path` is a pipe, a socket or a device, which bertkit does not read: it reads a file more than once
    (its size, its line ends, then its lines)."""
    return (f"{path} is not a regular file (a pipe or a device): save it to a file first (predict and embed also "
            "read standard input: --input -)")  # fmt: skip


def describe_os_error(e: OSError) -> str:
    """One line for a read or write the system refused: what, where, and what to do."""
    name = Path(e.filename) if e.filename else None
    if name is not None and name.is_symlink() and not name.exists():
        return f"{name} is a link to nothing: remove it, or choose another path"
    what = e.strerror or str(e)
    if name is not None and name.name.startswith(".") and name.name.endswith(".tmp"):
        # An atomic write's temporary file: the user knows the folder, not this name.
        what, name = f"cannot write in {name.parent}: {what}", None
    where = f" ({name})" if name is not None else ""
    todo = {
        errno.EACCES: "check its permissions, or choose another path",
        errno.EPERM: "check its permissions, or choose another path",
        errno.EROFS: "the file system is read-only: choose another path",
        errno.ENOSPC: "the disk is full: free some space, then run again",
        errno.EDQUOT: "the disk quota is used up: free some space, then run again",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
        errno.EEXIST: "a part of the path is a file, not a folder: choose another path",
        errno.ENOENT: "check the path",
        errno.EISDIR: "it is a folder: give a file",
        errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter path",
        errno.EMFILE: "this process may open no more files: raise the limit (ulimit -n) and run again",
        errno.ENFILE: "the system may open no more files: close some programs and run again",
        errno.EIO: "the disk or file system failed to read or write: check it (dmesg), then run again",
    }.get(e.errno or 0, "check the path and the disk")
    return f"{what}{where}: {todo}"


class BytesRead:
    """The bytes `read_lines` has handed out so far, over all the files it was given this counter for: how far a
    long pass over a corpus has come (a progress bar's position against the files' sizes)."""

    def __init__(self) -> None:
        self.n = 0


def read_lines(path: str | Path, read: BytesRead | None = None) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their line ends (LF, CR LF, or CR alone where the file uses
    nothing else: `_ends_lines_with_cr`). `read`, when given, counts the bytes of the lines yielded.

    Raises `BertkitError` naming the file, line and byte offset of the first invalid UTF-8 sequence.
    """
    path = Path(path)
    if path.is_dir():
        raise BertkitError(f"{path} is a directory: give its files, e.g. {path / '*.txt'}")
    if not path.is_file():
        raise BertkitError(not_a_regular_file(path) if is_special_file(path) else f"file {path} does not exist")
    with path.open("rb") as f:
        yield from _decoded_lines(_lines_at_cr(f) if _ends_lines_with_cr(f) else f, str(path), read)


def _ends_lines_with_cr(f: BinaryIO) -> bool:
    """Whether the file's line ends are a CR alone (old Mac files): a CR and no LF in its first 64 KB. Such a file
    read by LF would be one line: one document of a corpus, one input of a task file."""
    head = f.read(1 << 16)
    f.seek(0)
    return b"\r" in head and b"\n" not in head


def _lines_at_cr(f: BinaryIO) -> Iterator[bytes]:
    """The file's lines split at CR, each with its CR (no UTF-8 character holds that byte)."""
    rest = b""
    while chunk := f.read(1 << 20):
        *lines, rest = (rest + chunk).split(b"\r")
        yield from (line + b"\r" for line in lines)
    if rest:
        yield rest


def hash_file(digest: Any, path: str | Path) -> None:
    """Feed the bytes of the file `path` to `digest` (a hashlib object), a block at a time."""
    with Path(path).open("rb") as stream:
        while block := stream.read(1 << 22):
            digest.update(block)


def read_input_lines(path: str | Path) -> list[str]:
    """The lines of a file of inputs, one input a line (`embed`, plain-line `predict`, task files): split at LF,
    CR LF and also at a CR alone (old Mac files), as Python's universal newlines split them, so that such a file is
    not read as one long input. A form feed or U+2028 inside a line is no line end. Corpus files keep `read_lines`:
    a stray CR in a file of LF line ends is white space inside a sentence there."""
    return _split_at_lone_cr(read_lines(path))


def read_stdin_lines() -> list[str]:
    """The lines of standard input, split and decoded as `read_input_lines` reads a file's."""
    return _split_at_lone_cr(_decoded_lines(sys.stdin.buffer, "standard input", None))


def _split_at_lone_cr(lines: Iterable[str]) -> list[str]:
    return [part for line in lines for part in line.split("\r")]


def _decoded_lines(stream: Iterable[bytes], name: str, read: BytesRead | None) -> Iterator[str]:
    offset, head = 0, b""
    for lineno, raw in enumerate(stream, start=1):
        head = head or raw[:8]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BertkitError(
                f"{name}: not valid UTF-8 at byte {offset + e.start} (line {lineno}); {_what_to_do_with(head, raw)}"
            ) from None
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text
        offset += len(raw)
        if read is not None:
            read.n += len(raw)
        yield line.rstrip("\r\n")


# File types a user may give where text is expected, by their first bytes, and what to do with each.
_NOT_TEXT = {
    b"\x1f\x8b": "it is gzip-compressed: decompress it first (gunzip)",
    b"PK\x03\x04": "it is a zip archive: extract the text file from it first (unzip)",
    b"BZh": "it is bzip2-compressed: decompress it first (bunzip2)",
    b"\xfd7zXZ": "it is xz-compressed: decompress it first (unxz)",
    b"\xff\xfe": "it is UTF-16 (its first bytes say so): convert it first (iconv -f UTF-16 -t UTF-8)",
    b"\xfe\xff": "it is UTF-16 (its first bytes say so): convert it first (iconv -f UTF-16 -t UTF-8)",
}


def _what_to_do_with(head: bytes, line: bytes) -> str:
    """What to do with a file that is not UTF-8: by its first bytes `head`, and by the `line` that failed."""
    for magic, remedy in _NOT_TEXT.items():
        if head.startswith(magic):
            return remedy
    if b"\0" in line:
        return "it holds NUL bytes: it is not a text file (or is UTF-16 without a byte-order mark)"
    try:
        line.decode("gb18030")
    except UnicodeDecodeError:
        return "convert the file to UTF-8 first (iconv -f ITS_ENCODING -t UTF-8)"
    return "if it is Chinese text in GBK or GB18030, convert it first (iconv -f GB18030 -t UTF-8)"


def read_corpus_lines(paths: Iterable[str | Path], read: BytesRead | None = None) -> Iterator[str]:
    """The lines of several corpus files, one after another; `read`, when given, counts their bytes."""
    for p in paths:
        yield from read_lines(p, read)


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
                "choose another output"
            )


def check_output_file(
    out: str | Path, inputs: Iterable[str | Path | None], overwrite: bool, flag: str = "--out"
) -> None:
    """Refuse a file output that would destroy something, before any work: an input, or a folder holding one; an
    existing folder; an existing path that is not a plain file (a link, a device such as /dev/null, a pipe: the
    file is written beside it and renamed over it, which would replace the link or device itself); a file inside
    an input folder (e.g. the model's weights); any other existing file unless `overwrite`."""
    if str(out) == "-" or str(out).endswith(("/", os.sep)):
        raise BertkitError(f"{flag} {out}: give the path of a file to write (leave {flag} out to print predictions "
                           "or metrics)")  # fmt: skip
    path = Path(out)
    given = [Path(p) for p in inputs if p is not None]
    check_output_not_input(path, given, flag)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a folder" if path.is_dir() and not path.is_symlink() else "not a plain file"
        raise BertkitError(f"{flag} {out} is {kind}; give the path of a file to write (a new one, or with --overwrite "
                           "an existing file)")  # fmt: skip
    if not path.exists():
        return
    target = _resolved(path)
    for source in map(_resolved, given):
        if source.is_dir() and (target.is_relative_to(source) or _links_to(source, target)):
            raise BertkitError(f"{flag} {out} is a file of the input {source}, which this command reads; write "
                               "elsewhere")  # fmt: skip
    if not overwrite:
        raise BertkitError(f"{flag} {out} exists; add --overwrite to replace it, or choose another file")


def _links_to(folder: Path, target: Path) -> bool:
    """Whether a file in `folder` is a link to `target` (a Hugging Face cache's snapshot links into blobs/)."""
    return any(p.is_symlink() and p.resolve() == target for p in folder.rglob("*"))


def own_entries(out: Path, owns: Sequence[str]) -> list[Path]:
    """The entries directly in `out` whose names match one of the glob patterns in `owns`."""
    return sorted(p for p in out.iterdir() if any(fnmatch(p.name, pattern) for pattern in owns))


# The names of the files bertkit writes inside the folders it owns in an output directory (checkpoints, model/,
# training/, tokenizer/, tensorboard/, a grid's runs/): --overwrite removes such a folder only when it holds nothing
# else, so a user's notes or model card put beside a saved model are never removed with it.
WRITTEN_INSIDE = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", "vocab.txt",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "bertkit_*.json", "training_state.pt",
    "latest", "metrics.json", "metrics.jsonl", "curves.png", "events.out.tfevents.*", ".bertkit-output", ".*.tmp",
)  # fmt: skip
# ... and the folders it writes inside them (checkpoints, logs, a fine-tuning grid's runs): a file of a bertkit
# name in any other folder (a user's model/my_variant/config.json) is the user's.
FOLDERS_INSIDE = ("checkpoint-*", ".tmp-checkpoint-*", "tensorboard", "training", "lr*_seed*", "seed*", ".tmp-*")


def foreign_files(entries: Iterable[Path]) -> list[Path]:
    """The files inside the folders among `entries` that bertkit does not write (`WRITTEN_INSIDE`, in
    `FOLDERS_INSIDE`)."""

    def bertkits(p: Path, entry: Path) -> bool:
        folders = p.relative_to(entry).parts[:-1]
        return (not p.is_symlink() and any(fnmatch(p.name, pattern) for pattern in WRITTEN_INSIDE)
                and all(any(fnmatch(f, pattern) for pattern in FOLDERS_INSIDE) for f in folders))  # fmt: skip

    found = []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            found += sorted(
                p for p in entry.rglob("*") if (not p.is_dir() or p.is_symlink()) and not bertkits(p, entry)
            )
    return found


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
    set_aside_replaced: bool = False,
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
    replaces them once its new output is complete) or `set_aside_replaced` (moved aside, see `set_aside`: the
    caller settles them with `settle_set_aside`).
    """
    path = Path(out)
    check_output_not_input(path, inputs)
    if path.exists() and not path.is_dir():
        raise BertkitError(f"--out {path} is a file, not a directory: choose a directory")
    if not path.is_dir():
        path.mkdir(parents=True)
    owner = output_owner(path)
    entries = [p for p in path.iterdir() if p.name != OWNER_FILE or owner != command]
    # Recognised by its files alone only when no other command's mark says otherwise, on the folder or on the one
    # above it: a fine-tuning run's training/ holds checkpoints too.
    marks = {owner, output_owner(path.resolve().parent)} - {None}
    own = owner == command or (is_own_output and marks <= {command})
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
        foreign = foreign_files(own_entries(path, owns))
        if foreign:
            inside = foreign[0].relative_to(path)
            raise BertkitError(
                f"{path} holds {str(inside)!r}, which bertkit {command} did not write: --overwrite would remove it "
                f"with {inside.parts[0]}/; move it out of {path} first, or choose a new --out"
            )
        if set_aside_replaced:
            set_aside(path, own_entries(path, owns))
        elif not replace_later:
            remove_entries(own_entries(path, owns))
    text = json.dumps({"command": command}) + "\n"
    (path / OWNER_FILE).write_text(text, encoding="utf-8")
    return path


# What --overwrite replaces in a training run's directory waits here until the new run has something of its own to
# keep (a checkpoint, or its finished output): a run that fails or is interrupted before then puts it back. Two
# marks make each move resumable after a kill: SET_ASIDE_DONE once everything is in, RESTORING once the new run's
# entries are gone and the earlier ones are on their way back.
SET_ASIDE = ".bertkit-replaced"
SET_ASIDE_DONE = ".complete"
RESTORING = ".restoring"


def set_aside(out: Path, entries: Sequence[Path]) -> None:
    """Move `entries` (directly in `out`) into out/SET_ASIDE. When a set-aside output is there already (a run that
    replaced it was killed before it settled), that stays the earlier output, and `entries`, what the killed run
    wrote, are removed."""
    folder = out / SET_ASIDE
    if (folder / SET_ASIDE_DONE).is_file():
        remove_entries(entries)
        return
    folder.mkdir(exist_ok=True)  # a move killed half-way is finished now: nothing new was written meanwhile
    for p in entries:
        p.rename(folder / p.name)
    (folder / SET_ASIDE_DONE).touch()


def settle_set_aside(out: Path, owns: Sequence[str], keep_new: Callable[[], bool]) -> bool:
    """End a replacement begun by `set_aside`: when `keep_new()` (the new run has a checkpoint or its finished
    output) delete the earlier output; otherwise remove the new run's entries of `owns` and move the earlier ones
    back. False when nothing was set aside."""
    folder = out / SET_ASIDE
    if not folder.is_dir():
        return False
    if not (folder / RESTORING).is_file():  # else a kill interrupted the move back: finish it
        if not (folder / SET_ASIDE_DONE).is_file():
            # Killed while setting aside: the new run had not started; what is still in `out` is the earlier output.
            set_aside(out, own_entries(out, owns))
        if keep_new():
            shutil.rmtree(folder)
            return True
        remove_entries(own_entries(out, owns))
        (folder / RESTORING).touch()
    for p in folder.iterdir():
        if p.name not in (SET_ASIDE_DONE, RESTORING):
            p.rename(out / p.name)
    shutil.rmtree(folder)
    return True


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
    puts in its message, or, given the `folder` written to, less than 1 MiB left there (unless the system said
    what else went wrong: a missing folder, a refused permission; /proc and read-only file systems show no free
    space either)."""
    seen: set[int] = set()
    e: BaseException | None = error
    other_reason = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(e) for s in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        other_reason = other_reason or (isinstance(e, OSError) and e.errno is not None)
        e = e.__cause__ or e.__context__
    if folder is None or other_reason:
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


def _new_temp_file(path: Path) -> tuple[Path, int]:
    """An empty file beside `path`, and the mode a plain open() gives a new file here (0o666 less the umask, which
    the kernel applies to this very file; mkstemp's 0o600 would hide models from the users a umask of 022 allows)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def atomic_temps(names: Iterable[str]) -> tuple[str, ...]:
    """Glob patterns of the temporary files `atomic_write` leaves beside `names` when killed mid-write."""
    return tuple(f".{name}.*.tmp" for name in names)


def atomic_write(path: str | Path, write: Any) -> None:
    """Run `write(tmp_path)` and move the result over `path` only once it is complete.

    A failure leaves any earlier `path` as it was and no temporary file; a full disk is a `BertkitError` saying
    "disk full at PATH". The file gets the mode a plain open() would give it: the earlier file's mode, else 0o666
    less the umask (whatever mode `write` creates its file with, as safetensors does with 0o600). The temporary
    file is named `.NAME.RANDOM.tmp` beside `path`: the commands that clean up after a kill match that pattern."""
    path = Path(path)
    try:
        tmp, mode = _new_temp_file(path)
    except OSError as e:
        if is_disk_full(e, path.parent):
            raise _disk_full_error(path) from None
        raise
    try:
        write(str(tmp))
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_file() else mode)
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and not isinstance(e, BertkitError) and is_disk_full(e, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise _disk_full_error(path) from None
        raise


def _disk_full_error(path: Path) -> BertkitError:
    return BertkitError(
        f"disk full at {path}: it was not written (any earlier file of that name is unchanged); free some space or "
        "write to another disk, then run again"
    )


def claim_folder(folder: str | Path, record: str, settings: dict, refuse: Callable[[dict | None], Exception]) -> None:
    """Make `folder` the cache of the one run that `settings` (JSON-able) describes, recorded in `folder/record`.

    A cache whose stages are reused by their files alone must never serve another run: a folder recorded with
    other settings raises `refuse(recorded settings)`, a non-empty folder without the record `refuse(None)`, and
    nothing in the folder is touched then. Callers word the refusal (what differs, which flag to change)."""
    folder = Path(folder)
    path = folder / record
    wanted = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    if path.is_file():
        recorded = read_json(path, f"it records which run made {folder}: move that folder away, or choose another")
        if recorded != wanted:
            raise refuse(recorded)
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise refuse(None)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(wanted, indent=2) + "\n"))


_deferring = False  # whether the main thread is inside `interrupts_deferred`


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block has finished, then raise KeyboardInterrupt: for writes that a
    KeyboardInterrupt raised inside a library's writer would turn into another error (torch.save's zip writer
    reports "unexpected pos"), with a traceback instead of the command's one line. A second Ctrl-C does not wait.
    Outside the main thread signals cannot be handled, and the block runs as it is; inside another such block it
    runs as part of that one (its Ctrl-C is held until the outer block has finished)."""
    global _deferring
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


_HELD_LOCKS: dict[str, int] = {}  # output folder (real path) -> the open lock file this process holds for it


@contextmanager
def output_lock(out: str | Path, command: str) -> Iterator[None]:
    """Hold, for the block, the lock of writing into the folder `out`; another bertkit process that asks for it
    meanwhile is refused (two runs into one --out mixed one run's weights with the other's metrics, both exit 0).
    The lock is a file outside `out` (in the system's temporary folder, named by `out`'s real path), so nothing is
    added to the user's folder and it works before `out` exists; the kernel releases it when the process ends,
    however it ends. Asked again inside the block (by the same process), it is already held."""
    key = os.path.realpath(out)
    if key in _HELD_LOCKS:
        yield
        return
    import fcntl
    import hashlib
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"bertkit-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BertkitError(
            f"{out} is being written by another bertkit command that is still running: wait for it to finish (or "
            f"stop it), or give bertkit {command} another output folder"
        ) from None
    _HELD_LOCKS[key] = fd
    try:
        yield
    finally:
        del _HELD_LOCKS[key]
        os.close(fd)  # releases the lock
