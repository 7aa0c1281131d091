"""Progress bars: drawn often on a terminal, rarely in a log file, always with their last state."""

from __future__ import annotations

import io
import time

import pytest

from bertkit.progress import LOG_REDRAW_S, make_bar, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def draws(text: str) -> list[str]:
    return [d for d in text.split("\r") if d.strip()]


def test_a_bar_in_a_log_file_is_redrawn_rarely_and_ends_on_its_last_state() -> None:
    # A job's log (standard error redirected to a file) got a redraw every 0.1 s: megabytes of bars over a long run.
    log = io.StringIO()
    with progress_bar(True, total=500, desc="train", file=log) as bar:
        for _ in range(500):
            bar.update()
            time.sleep(0.0005)  # 0.25 s in all: tqdm's own interval would have drawn the bar a few times over
    shown = draws(log.getvalue())
    assert len(shown) <= 3, shown  # the first, perhaps one more, and the last
    assert "500/500" in shown[-1] and "100%" in shown[-1]


def test_a_bar_on_a_terminal_keeps_tqdms_interval() -> None:
    terminal = Terminal()
    bar = make_bar(total=10, file=terminal)
    assert bar.mininterval < 1
    bar.close()
    logged = make_bar(total=10, file=io.StringIO())
    assert logged.mininterval == LOG_REDRAW_S
    logged.close()


def test_standard_error_decides_when_no_file_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", Terminal())
    bar = make_bar(total=10)
    assert bar.mininterval < 1
    bar.close()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = make_bar(total=10)
    assert bar.mininterval == LOG_REDRAW_S
    bar.close()
