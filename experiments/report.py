"""An experiment's report: tables of mean ± std over seeds, verdicts computed from the numbers, PNG plots."""

from __future__ import annotations

import json
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float] | float | None) -> str:
    """A table cell: 'mean ± std' of a list of scores, a single number to 3 decimals, or 'n/a' for None."""
    if values is None:
        return "n/a"
    if isinstance(values, float | int):
        return f"{values:.3f}"
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def verdict(claim: str, a: list[float], b: list[float]) -> str:
    """'held' when a's mean beats b's by more than the larger std, 'held within noise' when by less, else not."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    diff = ma - mb
    if diff > max(sa, sb):
        word = "held"
    elif diff > 0:
        word = "held only within noise"
    else:
        word = "did not hold"
    return f"{claim}: **{word}** ({ma:.3f} ± {sa:.3f} vs {mb:.3f} ± {sb:.3f}, difference {diff:+.3f})"


@dataclass
class Table:
    """A results table: one row per task, one column per arm; a cell: scores over seeds, a number or None."""

    title: str
    columns: list[str]  # arm labels
    rows: list[tuple[str, list[list[float] | float | None]]] = field(default_factory=list)

    def add(self, label: str, cells: list[list[float] | float | None]) -> None:
        """Append a row: its label and one cell per column."""
        self.rows.append((label, cells))

    def markdown(self) -> str:
        """The table in markdown under a `###` title, cells as 'mean ± std'."""
        lines = [f"| task | {' | '.join(self.columns)} |", "| --- |" + " --- |" * len(self.columns)]
        lines += [f"| {label} | {' | '.join(fmt(c) for c in cells)} |" for label, cells in self.rows]
        return f"### {self.title}\n\n" + "\n".join(lines)


@dataclass
class Report:
    """One experiment's results: setup, tables, verdicts, notes, curves, raw numbers; `write` renders it."""

    name: str
    title: str
    setup: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption), filled by `write`
    # (file, caption, one (x, y) list per seed)
    curves: list[tuple[str, str, list[list[tuple[float, float]]]]] = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def curve(self, file: str, caption: str, seeds: list[list[tuple[float, float]]]) -> None:
        """A line plot to draw when the report is written: one line per seed and their mean."""
        self.curves.append((file, caption, seeds))

    def _bar_plot(self, out_dir: Path, table: Table, file: str) -> None:
        """Grouped bars (one group per task, one bar per arm) with the std over seeds as error bars."""
        plt = _pyplot()

        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(table.rows), 3.6))
        width = 0.8 / len(table.columns)
        for j, col in enumerate(table.columns):
            xs, ms, ss = [], [], []
            for i, (_, cells) in enumerate(table.rows):
                cell = cells[j]
                if cell is None:
                    continue
                m, s = mean_std(cell) if isinstance(cell, list) else (float(cell), 0.0)
                xs.append(i + (j - (len(table.columns) - 1) / 2) * width)
                ms.append(m)
                ss.append(s)
            ax.bar(xs, ms, width, yerr=ss, capsize=3, label=col)
        ax.set_xticks(range(len(table.rows)), [textwrap.fill(label, 22) for label, _ in table.rows], fontsize=7)
        ax.set_ylabel("dev score")
        ax.set_title(table.title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=110)
        plt.close(fig)
        self.figures.append((file, f"{table.title}: mean over seeds, error bars one std"))

    def _line_plot(self, out_dir: Path, file: str, caption: str, seeds: list[list[tuple[float, float]]]) -> None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for i, points in enumerate(seeds):
            ax.plot([x for x, _ in points], [y for _, y in points], lw=0.8, alpha=0.5, label=f"seed {i}")
        mean = [(p[0][0], statistics.fmean(y for _, y in p)) for p in zip(*seeds, strict=False)]
        ax.plot([x for x, _ in mean], [y for _, y in mean], marker="o", color="black", label="mean")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
        ax.set_xlabel("pre-training step")
        ax.set_ylabel(caption.split(" as ")[0], fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / file, dpi=110)
        plt.close(fig)
        self.figures.append((file, caption))

    def write(self, out_dir: Path) -> Path:
        """Write `NAME.md`, `NAME.json` and the PNGs into `out_dir`; returns the markdown's path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.figures = []
        for i, table in enumerate(self.tables):
            self._bar_plot(out_dir, table, f"{self.name}{'_' + str(i + 1) if i else ''}.png")
        for file, caption, points in self.curves:
            self._line_plot(out_dir, file, caption, points)
        parts = [f"# {self.title}", "", "_Written by `python -m experiments " + self.name + "`; every number below was"
                 " measured by that command (see Setup)._", "", "## Setup", ""]  # fmt: skip
        parts += [f"- {line}" for line in self.setup]
        parts += ["", "## Results", ""]
        for table in self.tables:
            parts += [table.markdown(), ""]
        for file, caption in self.figures:
            parts += [f"![{caption}]({file})", "", f"_{caption}_", ""]
        parts += ["## What held and what did not", ""]
        parts += [f"- {v}" for v in self.verdicts] or ["- (no comparison)"]
        if self.notes:
            parts += ["", "## Notes", ""]
            parts += [f"- {n}" for n in self.notes]
        path = out_dir / f"{self.name}.md"
        path.write_text("\n".join(parts) + "\n", encoding="utf-8")
        (out_dir / f"{self.name}.json").write_text(json.dumps(self.raw, indent=2, ensure_ascii=False) + "\n")
        return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
