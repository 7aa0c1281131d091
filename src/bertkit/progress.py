"""Progress bars on standard error for long work, made only when shown."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# How often a bar is redrawn when standard error is a file or a pipe (a job's log), not a terminal: each redraw is
# another line there, and tqdm's own 0.1 s would write a hundred thousand of them in a few hours of training.
LOG_REDRAW_S = 30.0


def make_bar(**kwargs: Any) -> tqdm:
    """A tqdm bar (`kwargs` as tqdm's) on standard error, redrawn at most every `LOG_REDRAW_S` seconds where that is
    not a terminal; the bar's last state is drawn when it closes, whatever the interval."""
    to_log = not getattr(kwargs.get("file") or sys.stderr, "isatty", lambda: False)()
    if to_log and not tqdm.__module__.startswith("tqdm.notebook"):  # a notebook's widget redraws in place
        kwargs.setdefault("mininterval", LOG_REDRAW_S)
    return tqdm(**kwargs)


@contextmanager
def progress_bar(show: bool, **kwargs: Any) -> Iterator[tqdm | None]:
    """A tqdm bar (`kwargs` as tqdm's) when `show`, else None: even a disabled tqdm makes a multiprocessing lock,
    which a server's worker process would leave behind. On an error the bar is cleared, so that the error's one line
    stands alone."""
    if not show:
        yield None
        return
    bar = make_bar(**kwargs)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


def progress_iter(items: Sequence[T], show: bool, **kwargs: Any) -> Iterator[T]:
    """`items`, counted by a bar when `show` (see `progress_bar`; an error in the loop that consumes them clears
    it too, as the abandoned generator is closed)."""
    with progress_bar(show, total=len(items), **kwargs) as bar:
        for item in items:
            yield item
            if bar is not None:
                bar.update()
