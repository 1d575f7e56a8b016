"""PNG pictures of results: one timeline per ``dual_infer`` call, and one speedup chart per session.

matplotlib is an optional extra, so it is imported only inside the functions that draw; the plugin can
import this module and call ``require_matplotlib`` to fail early with an install hint. Figures are built
with the object-oriented API on an Agg canvas rather than through pyplot, whose global state is neither
thread-safe nor wanted in a test session that may have no display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DualGpuUsageError
from .report import ReportRow
from .timeline import LaneTimeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MATPLOTLIB_MISSING = "png reports need matplotlib: pip install 'pytest-dualgpu[plot]'"

DPI = 100
WIDTH_INCHES = 10.0
TIMELINE_BASE_PX = 120
TIMELINE_TRACK_PX = 45
SESSION_BASE_PX = 150
SESSION_ROW_PX = 30
LABEL_CHARS = 48
RUN_ORDER = ("concurrent", "sequential", "kernels")
SHARED_CLOCK = ("concurrent", "sequential")


def require_matplotlib() -> None:
    """Fail with an install hint, not a bare ImportError, when the optional plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise DualGpuUsageError(MATPLOTLIB_MISSING) from error


def write_timeline_png(row: ReportRow, path: Path) -> None:
    """Draw each lane's busy intervals, run by run, so a missing overlap can be seen rather than inferred."""
    require_matplotlib()
    runs = _ordered_runs(row.result.timelines)
    tracks = sum(len(lines) for _, lines in runs)
    figure = _new_figure(TIMELINE_BASE_PX + TIMELINE_TRACK_PX * max(tracks, 1))
    result = row.result
    title = (
        f"{row.label}\nspeedup {result.speedup:.2f}x (ideal {result.ideal_speedup:.2f}x), "
        f"overlap {result.overlap:.2f}"
    )
    if result.kernel_overlap is not None:
        title += f", kernel overlap {result.kernel_overlap:.2f}"
    figure.suptitle(title, fontsize=10)
    if not runs:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no timeline was recorded", ha="center", va="center", transform=axes.transAxes)
        _save(figure, path)
        return
    colours = _lane_colours(result.lane_names, runs)
    grid = figure.add_gridspec(len(runs), 1, height_ratios=[len(lines) for _, lines in runs])
    shared_end = max((_end_ms(lines) for run, lines in runs if run in SHARED_CLOCK), default=0.0)
    shared: Axes | None = None
    for index, (run, lines) in enumerate(runs):
        on_shared_clock = run in SHARED_CLOCK
        axes = figure.add_subplot(grid[index], sharex=shared if on_shared_clock else None)
        if on_shared_clock and shared is None:
            shared = axes
        _draw_run(axes, run, lines, colours)
        end = shared_end if on_shared_clock else _end_ms(lines)
        axes.set_xlim(0.0, end * 1.02 if end > 0 else 1.0)
    axes.set_xlabel("ms from the start of each run")
    _save(figure, path)


def write_session_png(rows: Sequence[ReportRow], path: Path) -> None:
    """Put every call's measured speedup beside what perfect overlap would give, to spot the laggards.

    Rows with a failed verdict are red, so the chart agrees with the table at a glance.
    """
    require_matplotlib()
    figure = _new_figure(SESSION_BASE_PX + SESSION_ROW_PX * max(len(rows), 1))
    axes = figure.add_subplot()
    axes.set_title("pytest-dualgpu: measured speedup (95% CI) and ideal speedup", fontsize=10)
    if not rows:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no dual_infer results", ha="center", va="center", transform=axes.transAxes)
        _save(figure, path)
        return
    positions = list(range(len(rows)))
    speedups = [_finite(row.result.speedup) for row in rows]
    below = [
        max(0.0, speedup - _finite(row.result.speedup_ci[0]))
        for speedup, row in zip(speedups, rows, strict=True)
    ]
    above = [
        max(0.0, _finite(row.result.speedup_ci[1]) - speedup)
        for speedup, row in zip(speedups, rows, strict=True)
    ]
    ideals = [_finite(row.result.ideal_speedup) for row in rows]
    colours = ["tab:red" if row.failed else "tab:blue" for row in rows]
    axes.barh(
        positions,
        speedups,
        height=0.6,
        color=colours,
        xerr=[below, above],
        error_kw={"ecolor": "black", "capsize": 3, "linewidth": 1},
        label="measured speedup (95% CI)",
    )
    axes.scatter(ideals, positions, marker="D", color="tab:orange", zorder=3, label="ideal speedup")
    axes.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="no gain (1.0x)")
    axes.set_yticks(positions, [_shorten(row.label) for row in rows], fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    highest = max([*ideals, *(s + a for s, a in zip(speedups, above, strict=True)), 1.0])
    axes.set_xlim(0.0, highest * 1.1)
    axes.set_xlabel("speedup over running the lanes one after the other")
    axes.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, fontsize=8)
    _save(figure, path)


def _new_figure(height_px: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_INCHES, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")


def _ordered_runs(timelines: dict[str, list[LaneTimeline]]) -> list[tuple[str, list[LaneTimeline]]]:
    """Known runs first, in reading order; any other run after them so nothing recorded is hidden."""
    names = [run for run in RUN_ORDER if run in timelines]
    names += [run for run in timelines if run not in RUN_ORDER]
    return [(run, timelines[run]) for run in names if timelines[run]]


def _lane_colours(
    lane_names: Sequence[str], runs: Sequence[tuple[str, list[LaneTimeline]]]
) -> dict[str, str]:
    """The result's lanes get the first colours so a lane looks the same in every run."""
    colours: dict[str, str] = {}
    for name in [*lane_names, *(line.lane for _, lines in runs for line in lines)]:
        colours.setdefault(name, f"C{len(colours) % 10}")
    return colours


def _draw_run(axes: Axes, run: str, lines: Sequence[LaneTimeline], colours: dict[str, str]) -> None:
    for track, line in enumerate(lines):
        spans = [(start * 1e3, (end - start) * 1e3) for start, end in line.intervals]
        axes.broken_barh(spans, (track - 0.35, 0.7), facecolors=colours[line.lane], edgecolor="none")
    axes.set_yticks(range(len(lines)), [line.lane for line in lines], fontsize=8)
    axes.set_ylim(len(lines) - 0.5, -0.5)
    axes.set_ylabel(run, fontsize=9)
    axes.grid(axis="x", alpha=0.3)


def _end_ms(lines: Sequence[LaneTimeline]) -> float:
    return max((end * 1e3 for line in lines for _, end in line.intervals), default=0.0)


def _shorten(label: str) -> str:
    """Keep the end of a long node id: the test name and its parameters tell rows apart, the path does not."""
    return label if len(label) <= LABEL_CHARS else "…" + label[-(LABEL_CHARS - 1) :]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
