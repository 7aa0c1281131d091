"""Progress bars on standard error for long work, made only when shown."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


@contextmanager
def progress_bar(show: bool, **kwargs: Any) -> Iterator[tqdm | None]:
    """A tqdm bar (`kwargs` as tqdm's) when `show`, else None: even a disabled tqdm makes a multiprocessing lock,
    which a server's worker process would leave behind. On an error the bar is cleared, so that the error's one line
    stands alone."""
    if not show:
        yield None
        return
    bar = tqdm(**kwargs)
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
