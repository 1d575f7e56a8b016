"""PNG pictures of results: one timeline per ``dual_infer`` call, one speedup chart per session, and the
``dualgpu`` command's pairing matrix and batch-size sweep.

matplotlib is an optional extra, so it is imported only inside the functions that draw; the plugin can
import this module and call ``require_matplotlib`` to fail early with an install hint. Figures are built
with the object-oriented API on an Agg canvas rather than through pyplot, whose global state is neither
thread-safe nor wanted in a test session that may have no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_dualgpu.errors import DualGpuUsageError
from pytest_dualgpu.files import write_bytes
from pytest_dualgpu.reports.rows import ReportRow
from pytest_dualgpu.reports.traces import drawn_note
from pytest_dualgpu.results import DualResult
from pytest_dualgpu.timeline import LaneTimeline, overlap
from pytest_dualgpu.units import ratio_text

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
MATRIX_CELL_PX = 100
MATRIX_MARGIN_PX = (300, 250)
MATRIX_MIN_PX = (500, 450)
MATRIX_COLOURS = "RdYlGn"
MATRIX_FAILED = "lightgrey"
SPEEDUP_LOW = 0.5
SPEEDUP_HIGH = 2.0
SWEEP_PX = (1000, 700)


def require_matplotlib() -> None:
    """Fail with an install hint, not a bare ImportError, when the optional plot extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise DualGpuUsageError(MATPLOTLIB_MISSING) from error


def write_timeline_png(row: ReportRow, path: Path) -> None:
    """Draw each lane's busy intervals, run by run, so a missing overlap can be seen rather than inferred."""
    _save(timeline_figure(row), path)


def timeline_figure(row: ReportRow) -> Figure:
    """The timeline picture: each run's calls per lane, each run saying what a bar is and what is left out."""
    require_matplotlib()
    runs = _ordered_runs(row.result.timelines)
    tracks = sum(len(lines) for _, lines in runs)
    figure = _new_figure(TIMELINE_BASE_PX + TIMELINE_TRACK_PX * max(tracks, 1))
    result = row.result
    title = (
        f"{row.label}\nspeedup {ratio_text(result.speedup)} (ideal {ratio_text(result.ideal_speedup)}), "
        f"overlap {result.overlap:.2f} (median of {result.rounds} rounds)"
    )
    drawn = dict(runs).get("concurrent")
    if drawn:
        # The picture shows one round's first calls: the overlap of what is drawn is what the eye checks.
        title += f", {overlap([line.intervals for line in drawn]):.2f} in the calls drawn"
    if result.kernel_overlap is not None:
        title += f", kernel overlap {result.kernel_overlap:.2f}"
    figure.suptitle(title, fontsize=10)
    if not runs:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no timeline was recorded", ha="center", va="center", transform=axes.transAxes)
        return figure
    colours = _lane_colours(result.lane_names, runs)
    grid = figure.add_gridspec(len(runs), 1, height_ratios=[len(lines) for _, lines in runs])
    shared_end = max((_end_ms(lines) for run, lines in runs if run in SHARED_CLOCK), default=0.0)
    shared: Axes | None = None
    placed = []
    for index, (run, lines) in enumerate(runs):
        on_shared_clock = run in SHARED_CLOCK
        axes = figure.add_subplot(grid[index], sharex=shared if on_shared_clock else None)
        if on_shared_clock and shared is None:
            shared = axes
        _draw_run(axes, run, lines, colours)
        end = shared_end if on_shared_clock else _end_ms(lines)
        axes.set_xlim(0.0, end * 1.02 if end > 0 else 1.0)
        placed.append((axes, run, lines))
    figure.canvas.draw()  # lays the axes out, so their widths in pixels are known
    for axes, run, lines in placed:
        note = drawn_note(run, lines, result.micro_batches is not None)
        joined = _most_joined(lines, _pixels_per_ms(axes))
        if joined > 1:
            note += f"; up to {joined} of them run together into one bar at this scale (zoom in the trace)"
        axes.set_title(note, fontsize=7, loc="left")
    axes.set_xlabel("ms from the start of each run")
    return figure


def write_session_png(rows: Sequence[ReportRow], path: Path) -> None:
    """Put every call's measured speedup beside what perfect overlap would give, to spot the laggards."""
    _save(session_figure(rows), path)


def session_figure(rows: Sequence[ReportRow]) -> Figure:
    """The session chart. Rows with a failed verdict are red, so the chart agrees with the table at a
    glance, and a speedup bound the call was judged against is drawn on its row."""
    require_matplotlib()
    figure = _new_figure(SESSION_BASE_PX + SESSION_ROW_PX * max(len(rows), 1))
    axes = figure.add_subplot()
    axes.set_title("pytest-dualgpu: measured speedup (95% CI) and ideal speedup", fontsize=10)
    if not rows:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no dual_infer results", ha="center", va="center", transform=axes.transAxes)
        return figure
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
    for failed, label in ((False, "measured speedup (95% CI)"), (True, "measured speedup, a verdict failed")):
        chosen = [index for index, row in enumerate(rows) if row.failed is failed]
        if chosen:
            axes.barh(
                chosen,
                [speedups[index] for index in chosen],
                height=0.6,
                color="tab:red" if failed else "tab:blue",
                xerr=[[below[index] for index in chosen], [above[index] for index in chosen]],
                error_kw={"ecolor": "black", "capsize": 3, "linewidth": 1},
                label=label,
            )
    axes.scatter(ideals, positions, marker="D", color="tab:orange", zorder=3, label="ideal speedup")
    bounds = [
        (decision.bound, position)
        for position, row in zip(positions, rows, strict=True)
        for decision in row.result.decisions
        if decision.metric == "speedup"
    ]
    if bounds:
        axes.scatter(
            [bound for bound, _ in bounds], [position for _, position in bounds], marker="|", s=400,
            linewidths=2, color="black", zorder=4, label="the speedup's bound (min=)",
        )  # fmt: skip
    axes.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="no gain (1.0x)")
    axes.set_yticks(positions, [_shorten(row.label) for row in rows], fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    highest = max(
        [*ideals, *(s + a for s, a in zip(speedups, above, strict=True)), *(b for b, _ in bounds), 1.0]
    )
    axes.set_xlim(0.0, highest * 1.1)
    axes.set_xlabel("speedup over running the lanes one after the other")
    axes.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, fontsize=8)
    return figure


def write_matrix_png(
    names: Sequence[str], results: Sequence[Sequence[DualResult | None]], path: Path
) -> None:
    """Colour every pairing by its speedup, so the models worth co-locating stand out from the whole grid.

    ``results[i][j]`` is model i beside model j (the diagonal: beside a copy of itself); None is a pair
    that failed, drawn grey. The colours turn from red to green at 1.0x, where running at once stops
    losing to running one after the other.
    """
    require_matplotlib()
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    count = len(names)
    if len(results) != count or any(len(row) != count for row in results):
        raise ValueError(f"a pairing matrix of {count} models needs {count} rows of {count} results")
    speedups = np.ma.masked_invalid(
        [[math.nan if cell is None else cell.speedup for cell in row] for row in results]
    )
    best = max((float(value) for value in speedups.compressed()), default=SPEEDUP_HIGH)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=SPEEDUP_LOW, vmax=max(SPEEDUP_HIGH, best))
    colours = colormaps[MATRIX_COLOURS].with_extremes(bad=MATRIX_FAILED)
    width = max(MATRIX_MIN_PX[0], MATRIX_CELL_PX * count + MATRIX_MARGIN_PX[0])
    height = max(MATRIX_MIN_PX[1], MATRIX_CELL_PX * count + MATRIX_MARGIN_PX[1])
    figure = _new_figure(height, width_px=width)
    axes = figure.add_subplot()
    image = axes.imshow(speedups, cmap=colours, norm=norm, aspect="auto")
    for row, cells in enumerate(results):
        for column, cell in enumerate(cells):
            text, ink = "failed", "black"
            if cell is not None:
                efficiency = "-" if cell.efficiency is None else f"{cell.efficiency:.2f}"
                text = f"{ratio_text(cell.speedup)}\neff {efficiency}"
                if math.isfinite(cell.speedup):
                    ink = _ink_on(colours(norm(cell.speedup)))
            axes.text(column, row, text, ha="center", va="center", fontsize=8, color=ink)
    positions = list(range(count))
    axes.set_xticks(positions, list(names), rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    axes.set_yticks(positions, list(names), fontsize=8)
    axes.set_title("pairing matrix: speedup of running each pair at once", fontsize=10)
    figure.colorbar(image, ax=axes, label="speedup (sequential / concurrent)")
    _save(figure, path)


def write_sweep_png(batches: Sequence[int], results: Sequence[DualResult | None], path: Path) -> None:
    """Show how speedup and throughput move with batch size, to find where running at once stops paying.

    A batch size whose result is None failed and leaves a gap in every curve rather than a fake point.
    """
    require_matplotlib()
    if len(batches) != len(results):
        raise ValueError(f"{len(batches)} batch sizes but {len(results)} results")
    if any(batch <= 0 for batch in batches):
        raise ValueError("batch sizes must be positive to sit on a log2 axis")
    figure = _new_figure(SWEEP_PX[1], width_px=SWEEP_PX[0])
    points = sorted(zip(batches, results, strict=True), key=lambda point: point[0])
    measured = [result for _, result in points if result is not None]
    if not measured:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.set_title("batch-size sweep", fontsize=10)
        note = "no batch size could be measured"
        axes.text(0.5, 0.5, note, ha="center", va="center", transform=axes.transAxes)
        _save(figure, path)
        return
    figure.suptitle(f"batch-size sweep: {' beside '.join(measured[0].lane_names)}", fontsize=10)
    xs = [batch for batch, _ in points]
    present = [result is not None for _, result in points]
    top, bottom = figure.subplots(2, 1, sharex=True)

    def curve(value: Callable[[int, DualResult], float]) -> list[float]:
        return [math.nan if result is None else _or_nan(value(batch, result)) for batch, result in points]

    top.fill_between(
        xs,
        curve(lambda _, result: result.speedup_ci[0]),
        curve(lambda _, result: result.speedup_ci[1]),
        where=present,
        color="tab:blue",
        alpha=0.2,
        label="95% CI",
    )
    top.plot(xs, curve(lambda _, result: result.speedup), "o-", color="tab:blue", label="measured speedup")
    top.plot(xs, curve(lambda _, result: result.ideal_speedup), "--", color="tab:orange", label="ideal")
    top.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="no gain (1.0x)")
    top.set_ylim(bottom=0.0)
    top.set_ylabel("speedup")

    def total(measurement: str) -> Callable[[int, DualResult], float]:
        def items_per_second(batch: int, result: DualResult) -> float:
            return _rate(len(result.lanes) * batch, getattr(result, measurement).median)

        return items_per_second

    bottom.plot(xs, curve(total("concurrent")), "o-", color="tab:green", label="total, concurrent")
    bottom.plot(xs, curve(total("sequential")), "s--", color="tab:red", label="total, sequential")
    lane_names = measured[0].lane_names
    for lane, name in enumerate(lane_names):
        label = f"{name} alone" if lane_names.count(name) == 1 else f"{name} (lane {lane + 1}) alone"
        bottom.plot(xs, curve(_alone_rate(lane)), "^:", color=f"C{4 + lane % 6}", label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("items/s (log scale)")
    bottom.set_xlabel("batch size per lane")
    for axes in (top, bottom):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted(set(xs)), [str(batch) for batch in sorted(set(xs))])
        axes.set_xticks([], minor=True)
        axes.set_xlim(xs[0] / 1.4, xs[-1] * 1.4)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    _save(figure, path)


def _new_figure(height_px: int, width_px: int = round(WIDTH_INCHES * DPI)) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    image = io.BytesIO()
    figure.savefig(image, dpi=DPI, format="png")
    write_bytes(path, image.getvalue(), f"png:{path.parent}")


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


def _pixels_per_ms(axes: Axes) -> float:
    """How many pixels one millisecond of the x axis takes (once the layout has placed the axes)."""
    left, right = axes.get_xlim()
    return axes.get_window_extent().width / (right - left) if right > left else 0.0


def _most_joined(lines: Sequence[LaneTimeline], pixels_per_ms: float) -> int:
    """The most bars of one lane that a gap of under a pixel leaves looking like one."""
    most = 1
    for line in lines:
        run_length, previous_end = 1, None
        for start, end in sorted(line.intervals):
            if previous_end is not None and (start - previous_end) * 1e3 * pixels_per_ms < 1.0:
                run_length += 1
            else:
                run_length = 1
            most = max(most, run_length)
            previous_end = end
    return most


def _end_ms(lines: Sequence[LaneTimeline]) -> float:
    return max((end * 1e3 for line in lines for _, end in line.intervals), default=0.0)


def _shorten(label: str) -> str:
    """Keep the end of a long node id: the test name and its parameters tell rows apart, the path does not."""
    return label if len(label) <= LABEL_CHARS else "…" + label[-(LABEL_CHARS - 1) :]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def _rate(items: int, seconds: float) -> float:
    return items / seconds if seconds > 0 else math.nan


def _alone_rate(lane: int) -> Callable[[int, DualResult], float]:
    """Items per second of one lane running by itself: the concurrent rate is shared, so it says less."""

    def items_per_second(batch: int, result: DualResult) -> float:
        return _rate(batch, result.lanes[lane].alone.median) if lane < len(result.lanes) else math.nan

    return items_per_second


def _ink_on(rgba: tuple[float, float, float, float]) -> str:
    """White text on the dark ends of the colour scale, black on the light middle, so every label reads."""
    red, green, blue, _ = rgba
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.45 else "black"
