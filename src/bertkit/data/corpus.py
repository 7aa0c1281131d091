"""Reading text corpora: UTF-8 checked line by line, so a bad file is reported with its byte offset."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from bertkit.errors import BertkitError


def read_lines(path: str | Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their line ends.

    Raises `BertkitError` naming the file, line and byte offset of the first invalid UTF-8 sequence.
    """
    path = Path(path)
    if path.is_dir():
        raise BertkitError(f"{path} is a directory: give its files, e.g. {path / '*.txt'}")
    if not path.is_file():
        raise BertkitError(f"file {path} does not exist")
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BertkitError(
                    f"{path}: not valid UTF-8 at byte {offset + e.start} (line {lineno}); "
                    "convert the file to UTF-8 first (e.g. iconv -f GBK -t UTF-8)"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text
            offset += len(raw)
            yield line.rstrip("\r\n")


def read_corpus_lines(paths: Iterable[str | Path]) -> Iterator[str]:
    """The lines of several corpus files, one after another."""
    for p in paths:
        yield from read_lines(p)
