"""Inline SVG charts for the HTML report: individuals and moving-range charts, a capability
histogram, a Pareto chart and the line's cycle times against takt. Plain strings, no
JavaScript, no external asset: the report stays one self-contained file that prints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from quality import Capability, ParetoBar, RuleViolation
from quality.charts import moving_ranges
from quality.line import Line

WIDTH = 720
INK = "#1f2933"
GRID = "#d9dee3"
POINT = "#1f4e79"
ALARM = "#b3261e"
SPEC = "#8a5a00"
LIMIT = "#6b7785"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class _Scale:
    """Maps data values to pixels on one axis."""

    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        if not high > low:
            pad = abs(low) * 0.05 or 1.0
            low, high = low - pad, high + pad
        self.low, self.high, self.start, self.end = low, high, start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def coefficients(self) -> tuple[float, float]:
        """(a, b) with pixel = a * value + b: for long series, without a call per point."""
        a = (self.end - self.start) / (self.high - self.low)
        return a, self.start - a * self.low


def _svg(height: int, body: list[str], label: str, width: int = WIDTH) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="Helvetica, Arial, sans-serif" font-size="10">' + "".join(body) + "</svg>"
    )


def _hline(
    y: float, x0: float, x1: float, color: str, *, dash: str = "", width: float = 1.0
) -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{color}" '
        f'stroke-width="{width}"{dashed}/>'
    )


def _text(x: float, y: float, text: str, anchor: str = "start", color: str = INK) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{color}">{escape(text)}</text>'
    )


def _series_chart(
    values: Sequence[float],
    lines: list[tuple[str, float, str, str]],
    flagged: dict[int, str],
    *,
    label: str,
    height: int,
    x_offset: int = 0,
    total: int | None = None,
) -> str:
    """A run chart of ``values`` with labelled horizontal ``lines`` (name, value, colour, dash);
    ``flagged`` points (index -> tooltip) are drawn red. ``x_offset``: index of the first value
    on a shared x axis of ``total`` positions (the MR chart starts at the second piece)."""
    left, right, top, bottom = 44.0, WIDTH - 92.0, 8.0, height - 18.0
    count = total if total is not None else len(values)
    ys = [*values, *(v for _, v, _, _ in lines)]
    y = _Scale(min(ys), max(ys), bottom, top)
    x = _Scale(0, max(count - 1, 1), left, right)
    body = [
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        f'fill="none" stroke="{GRID}"/>'
    ]
    for name, value, color, dash in lines:
        body.append(_hline(y(value), left, right, color, dash=dash))
        body.append(_text(right + 4, y(value) + 3, f"{name} {_fmt(value)}", color=color))
    if len(values) > 1:
        (xa, xb), (ya, yb) = x.coefficients(), y.coefficients()
        points = " ".join(
            "%.1f,%.1f" % (xa * (i + x_offset) + xb, ya * v + yb)  # noqa: UP031 (2x faster)
            for i, v in enumerate(values)
        )
        body.append(
            f'<polyline points="{points}" fill="none" stroke="{POINT}" stroke-width="0.8"/>'
        )
    small = len(values) <= 150
    for i, v in enumerate(values):
        if i in flagged:
            body.append(
                f'<circle class="alarm" cx="{x(i + x_offset):.1f}" cy="{y(v):.1f}" r="3" '
                f'fill="{ALARM}"><title>{escape(flagged[i])}</title></circle>'
            )
        elif small or len(values) == 1:
            body.append(
                f'<circle cx="{x(i + x_offset):.1f}" cy="{y(v):.1f}" r="1.8" fill="{POINT}"/>'
            )
    body.append(_text(left - 4, top + 8, _fmt(y.high), "end", LIMIT))
    body.append(_text(left - 4, bottom, _fmt(y.low), "end", LIMIT))
    body.append(_text(left, height - 4, "1", "start", LIMIT))
    body.append(_text(right, height - 4, f"{count}", "end", LIMIT))
    return _svg(height, body, label)


def individuals_chart(cap: Capability, name: str) -> str:
    """The individuals chart: values in production order against centre and 3-sigma limits;
    points that break a Western Electric rule in red, with the unit in their tooltip."""
    if cap.chart is None:
        return ""
    lines = [("CL", cap.chart.center, INK, "")]
    if cap.chart.sigma > 0:
        lines += [("UCL", cap.chart.ucl, LIMIT, "5 3"), ("LCL", cap.chart.lcl, LIMIT, "5 3")]
    flagged = _flags(cap.violations)
    return _series_chart(
        cap.values, lines, flagged, label=f"Individuals chart of {name}", height=170
    )


def _flags(violations: Sequence[RuleViolation]) -> dict[int, str]:
    flagged: dict[int, str] = {}
    for v in violations:
        previous = flagged.get(v.index, f"{v.serial}: {_fmt(v.value)}, rule")
        flagged[v.index] = f"{previous} {v.rule}"
    return flagged


def moving_range_chart(cap: Capability, name: str) -> str:
    if cap.chart is None or cap.chart.mr_center is None or cap.chart.mr_ucl is None:
        return ""
    ranges = moving_ranges(cap.values)
    lines = [("MR", cap.chart.mr_center, INK, ""), ("UCL", cap.chart.mr_ucl, LIMIT, "5 3")]
    beyond = {
        i: f"{cap.serials[i + 1]}: MR {_fmt(r)} beyond UCL"
        for i, r in enumerate(ranges)
        if r > cap.chart.mr_ucl
    }
    return _series_chart(
        ranges,
        lines,
        beyond,
        label=f"Moving-range chart of {name}",
        height=110,
        x_offset=1,
        total=len(cap.values),
    )


def histogram(cap: Capability, name: str, target: float | None) -> str:
    """Capability histogram with the spec limits, the target and the normal curves of sigma
    within (solid) and overall (dashed)."""
    if not cap.values or cap.mean is None:
        return ""
    height, chart_width = 170, 460
    left, right, top, bottom = 10.0, chart_width - 10.0, 14.0, height - 18.0
    marks = [v for v in (cap.lsl, cap.usl, target) if v is not None]
    spread = max(cap.sd_overall or 0.0, cap.sd_within or 0.0)
    low = min([*cap.values, *marks, cap.mean - 3.5 * spread])
    high = max([*cap.values, *marks, cap.mean + 3.5 * spread])
    pad = (high - low) * 0.04
    x = _Scale(low - pad, high + pad, left, right)
    bins = max(5, min(40, round(math.sqrt(len(cap.values)))))
    bin_width = (x.high - x.low) / bins
    counts = [0] * bins
    for v in cap.values:
        counts[min(bins - 1, int((v - x.low) / bin_width))] += 1
    density_peak = max(
        [1.0 / (s * math.sqrt(2 * math.pi)) for s in (cap.sd_within, cap.sd_overall) if s] or [0.0]
    )
    scale_count = max(*counts, density_peak * len(cap.values) * bin_width)
    y = _Scale(0.0, scale_count * 1.08, bottom, top)
    body = [_hline(bottom, left, right, GRID)]
    for i, c in enumerate(counts):
        if c:
            x0 = x(x.low + i * bin_width)
            x1 = x(x.low + (i + 1) * bin_width)
            body.append(
                f'<rect x="{x0:.1f}" y="{y(c):.1f}" width="{max(x1 - x0 - 1, 0.5):.1f}" '
                f'height="{bottom - y(c):.1f}" fill="#c9d7e6" stroke="#8fa9c4"/>'
            )
    for sigma, dash in ((cap.sd_within, ""), (cap.sd_overall, "4 3")):
        if sigma:
            points = []
            for step in range(121):
                v = x.low + (x.high - x.low) * step / 120
                d = math.exp(-0.5 * ((v - cap.mean) / sigma) ** 2) / (
                    sigma * math.sqrt(2 * math.pi)
                )
                points.append(f"{x(v):.1f},{y(d * len(cap.values) * bin_width):.1f}")
            dashed = f' stroke-dasharray="{dash}"' if dash else ""
            body.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{POINT}" '
                f'stroke-width="1.2"{dashed}/>'
            )
    for label, value, color in (("LSL", cap.lsl, SPEC), ("USL", cap.usl, SPEC), ("T", target, INK)):
        if value is not None:
            body.append(
                f'<line x1="{x(value):.1f}" y1="{top:.1f}" x2="{x(value):.1f}" y2="{bottom:.1f}" '
                f'stroke="{color}" stroke-width="1.4"/>'
            )
            anchor = (
                "end" if x(value) > right - 40 else "start" if x(value) < left + 40 else "middle"
            )
            body.append(_text(x(value), top - 3, f"{label} {_fmt(value)}", anchor, color))
    body.append(_text(left, height - 4, _fmt(x.low), "start", LIMIT))
    body.append(_text(right, height - 4, _fmt(x.high), "end", LIMIT))
    return _svg(height, body, f"Capability histogram of {name}", chart_width)


def pareto_chart(bars: Sequence[ParetoBar], operation: str) -> str:
    """Failure codes by count with the cumulative share (right axis)."""
    if not bars:
        return ""
    shown = list(bars[:15])
    height, width = 170, max(320, min(WIDTH, 90 + 70 * len(shown)))
    left, right, top, bottom = 40.0, width - 46.0, 12.0, height - 34.0
    y = _Scale(0.0, float(max(b.count for b in shown)), bottom, top)
    pct = _Scale(0.0, 1.0, bottom, top)
    slot = (right - left) / len(shown)
    body = [_hline(bottom, left, right, GRID)]
    line = []
    for i, bar in enumerate(shown):
        x0 = left + i * slot + slot * 0.15
        body.append(
            f'<rect class="bar" x="{x0:.1f}" y="{y(bar.count):.1f}" width="{slot * 0.7:.1f}" '
            f'height="{bottom - y(bar.count):.1f}" fill="#8fa9c4"><title>{escape(bar.code)}: '
            f"{bar.count}</title></rect>"
        )
        body.append(_text(x0 + slot * 0.35, y(bar.count) - 3, str(bar.count), "middle"))
        body.append(_text(x0 + slot * 0.35, bottom + 12, bar.code[:14], "middle"))
        line.append(f"{x0 + slot * 0.35:.1f},{pct(bar.cumulative):.1f}")
    body.append(
        f'<polyline points="{" ".join(line)}" fill="none" stroke="{ALARM}" stroke-width="1.2"/>'
    )
    body.append(_text(right + 4, top + 8, "100 %", "start", ALARM))
    body.append(_text(right + 4, bottom, "0 %", "start", ALARM))
    body.append(_text(left - 4, top + 8, str(round(y.high)), "end", LIMIT))
    body.append(_text(left, height - 6, "failure code (cumulative share in red)", "start", LIMIT))
    return _svg(height, body, f"Failure Pareto of {operation}", width)


def line_chart(line: Line) -> str:
    """Each operation's cycle time per station: p50 as a bar, a whisker up to p95, against the
    line's takt (dashed). The constraint is named under its bar and an operation over takt says
    so in words, so neither depends on colour alone."""
    flows = [f for f in line.operations if f.effective_p50_s is not None]
    if not flows:
        return ""
    height, width = 210, max(320, min(WIDTH, 110 + 110 * len(flows)))
    left, right, top, bottom = 44.0, width - 70.0, 14.0, height - 48.0
    tops = [f.effective_p95_s or f.effective_p50_s or 0.0 for f in flows]
    if line.takt_s is not None:
        tops.append(line.takt_s)
    y = _Scale(0.0, max(tops) * 1.12 or 1.0, bottom, top)
    slot = (right - left) / len(flows)
    body = [_hline(bottom, left, right, GRID)]
    for i, f in enumerate(flows):
        p50 = f.effective_p50_s or 0.0
        limiting = f.operation == line.constraint
        over = bool(f.over_takt_p50)
        x0 = left + i * slot + slot * 0.25
        middle = x0 + slot * 0.25
        state = " constraint" if limiting else ""
        state += " over-takt" if over else ""
        tip = f"{f.operation}: p50 {_fmt(p50)} s"
        if f.effective_p95_s is not None:
            tip += f", p95 {_fmt(f.effective_p95_s)} s"
        if f.stations > 1:
            tip += f" per station ({f.stations} stations)"
        body.append(
            f'<rect class="bar{state}" x="{x0:.1f}" y="{y(p50):.1f}" width="{slot * 0.5:.1f}" '
            f'height="{bottom - y(p50):.1f}" fill="{ALARM if limiting else "#8fa9c4"}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        p95 = f.effective_p95_s if f.effective_p95_s is not None else p50
        whisker = p95 > p50
        if whisker:
            y95 = y(p95)
            body.append(
                f'<line class="whisker" x1="{middle:.1f}" y1="{y(p50):.1f}" x2="{middle:.1f}" '
                f'y2="{y95:.1f}" stroke="{INK}" stroke-width="1.2"/>'
            )
            body.append(_hline(y95, middle - 6, middle + 6, INK, width=1.2))
            body.append(_text(middle + 8, y95 + 3, f"p95 {_fmt(p95)}"))
        # Beside the whisker when there is one, so that the two do not cross.
        label_x, anchor = (middle - 4, "end") if whisker else (middle, "middle")
        body.append(_text(label_x, y(p50) - 3, _fmt(p50), anchor))
        body.append(_text(middle, bottom + 12, f.operation[:18], "middle"))
        under = "▲ constraint" if limiting else ""
        if over:
            under = (under + " · " if under else "") + "✗ over takt"
        if f.stations > 1:
            under = (under + " · " if under else "") + f"÷{f.stations} stations"
        if under:
            body.append(_text(middle, bottom + 24, under, "middle", ALARM if over else INK))
    if line.takt_s is not None:
        body.append(_hline(y(line.takt_s), left, right, SPEC, dash="6 3", width=1.4))
        body.append(
            _text(right + 4, y(line.takt_s) + 3, f"takt {_fmt(line.takt_s)} s", "start", SPEC)
        )
    body.append(_text(left - 4, top + 8, _fmt(y.high), "end", LIMIT))
    body.append(_text(left - 4, bottom, "0", "end", LIMIT))
    body.append(
        _text(left, height - 6, "cycle time per station, s: bar p50, whisker p95", "start", LIMIT)
    )
    return _svg(height, body, "Line: cycle time per operation against takt", width)
