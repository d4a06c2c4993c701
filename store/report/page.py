"""The report as one self-contained HTML page: inline CSS and SVG, no script, no network. It
prints on A4 (`@media print`) and reads like the capability report a quality engineer hands to
a customer: the decision first, then the exit criteria, yields, capability with charts, golden
samples, the units (each linking to its genealogy page) and the sign-off block."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from urllib.parse import quote

from quality import RULES
from quality.line import per_hour
from store.report import svg
from store.report.evaluate import (
    NOT_A_PREDICTION,
    CharacteristicReport,
    Criterion,
    Decision,
    Report,
)
from store.report.page_analysis import gauge_section, resources_section

DECISION_TEXT = {
    Decision.GO: ("GO", "Every exit criterion is met."),
    Decision.NO_GO: ("NO-GO", "At least one exit criterion is not met."),
    Decision.INSUFFICIENT: (
        "INSUFFICIENT DATA",
        "No criterion failed, but at least one could not be decided with the data at hand.",
    ),
}

CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm; }
* { box-sizing: border-box; }
body { font: 10.5pt/1.4 "Helvetica Neue", Helvetica, Arial, sans-serif; color: #1f2933;
  max-width: 200mm; margin: 0 auto; padding: 8mm 6mm; background: #fff; }
h1 { font-size: 19pt; margin: 0 0 2mm; }
h2 { font-size: 13.5pt; margin: 8mm 0 2mm; padding-bottom: 1mm;
  border-bottom: 1.5px solid #1f2933; }
h3 { font-size: 11pt; margin: 5mm 0 1.5mm; }
p { margin: 1mm 0 2mm; }
.meta { color: #52606d; margin-bottom: 4mm; }
.meta td { padding: 0.5mm 6mm 0.5mm 0; border: 0; }
table { border-collapse: collapse; width: 100%; margin: 1mm 0 3mm; font-size: 9.5pt; }
th, td { padding: 1mm 1.6mm; border-bottom: 0.6px solid #cbd2d9; text-align: left;
  vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
table.capability, table.operations { font-size: 8.5pt; }
table.capability td, table.capability th, table.operations td, table.operations th {
  padding: 0.8mm 1.1mm; }
.top { display: grid; grid-template-columns: 64mm 1fr; gap: 4mm; align-items: center; }
table.stats { font-size: 8.5pt; margin: 0; }
table.violations, table.pareto-table, table.units-table { font-size: 8.5pt; }
table.line-operations, table.wip { font-size: 8.5pt; }
.all-units { font-size: 8pt; line-height: 1.6; }
.all-units a { white-space: nowrap; }
table.golden, table.gauge, table.resources { font-size: 8.5pt; }
.finding { color: #b3261e; font-weight: 600; }
table.golden td { white-space: nowrap; }
table.violations th:last-child { text-align: left; }
table.stats th { background: none; font-weight: 400; color: #52606d; }
.pareto-pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 4mm;
  align-items: start; }
.decision { border-radius: 2mm; padding: 4mm 5mm; margin: 3mm 0 4mm; color: #fff; }
.decision .verdict { font-size: 24pt; font-weight: 700; letter-spacing: 0.5px; }
.decision.go { background: #1b7f3b; } .decision.no-go { background: #b3261e; }
.decision.insufficient { background: #a86b00; }
.badge { display: inline-block; padding: 0 2mm; border-radius: 1mm; font-weight: 600;
  font-size: 8.5pt; color: #fff; }
.badge.pass { background: #1b7f3b; } .badge.fail { background: #b3261e; }
.badge.insufficient { background: #a86b00; }
.kpis { display: flex; gap: 3mm; margin: 2mm 0 3mm; }
.kpi { flex: 1; border: 0.6px solid #cbd2d9; border-radius: 1.5mm; padding: 2mm 3mm; }
.kpi .v { font-size: 16pt; font-weight: 700; font-variant-numeric: tabular-nums; }
.kpi .k { color: #52606d; font-size: 8.5pt; }
.block { break-inside: avoid; page-break-inside: avoid; margin-bottom: 4mm; }
svg.chart { width: 100%; height: auto; display: block; margin: 1mm 0; }
.note { color: #52606d; font-size: 8.5pt; }
.v-pass { color: #1b7f3b; } .v-fail, .v-scrap { color: #b3261e; }
.v-rework, .v-incomplete { color: #a86b00; }
.sign td { height: 12mm; }
a { color: #1f4e79; }
@media print {
  body { max-width: none; padding: 0; font-size: 9.5pt; }
  h2 { break-after: avoid; page-break-after: avoid; }
  .pagebreak { break-before: page; page-break-before: always; }
  a { color: inherit; text-decoration: none; }
  .decision, .badge, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _idx(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    """Units per hour: one decimal, none when it is a whole number (48, 90.5)."""
    return "—" if value is None else f"{value:,.1f}".removesuffix(".0")


def _cell(value: str, numeric: bool = False) -> str:
    return f'<td class="num">{value}</td>' if numeric else f"<td>{value}</td>"


def _row(cells: Iterable[str]) -> str:
    return "<tr>" + "".join(cells) + "</tr>"


def _head(*names: str, numeric_from: int = 1) -> str:
    cells = (
        f'<th class="num">{escape(n)}</th>' if i >= numeric_from else f"<th>{escape(n)}</th>"
        for i, n in enumerate(names)
    )
    return "<thead><tr>" + "".join(cells) + "</tr></thead>"


def _badge(result: str) -> str:
    return f'<span class="badge {escape(result)}">{escape(result)}</span>'


def unit_link(serial: str, base: str) -> str:
    href = f"{base}/units/{quote(serial, safe='')}"
    return f'<a class="unit" href="{escape(href)}">{escape(serial)}</a>'


def _anchor(c: CharacteristicReport) -> str:
    """A valid, unique fragment id for a characteristic (names may hold spaces or quotes)."""
    return "c-" + quote(f"{c.operation}/{c.name}", safe="")


def _criterion_value(c: Criterion) -> tuple[str, str]:
    if c.name in ("first_pass_yield", "scrap_rate", "rework_rate"):
        return _pct(c.value), _pct(c.limit)
    if c.name == "aql":
        defects = "—" if c.value is None else f"{c.value:.0f} defects"
        return defects, "—" if c.limit is None else f"Ac {c.limit:.0f}"
    if c.name == "throughput_per_hour":
        return _rate(c.value), _rate(c.limit)
    if c.name == "cycle_time_p95":
        return _s(c.value) + " s" if c.value is not None else "—", _s(c.limit) + " s"
    return _idx(c.value), _idx(c.limit)


CRITERION_LABEL = {
    "first_pass_yield": "First-pass yield ≥",
    "scrap_rate": "Scrap rate ≤",
    "rework_rate": "Rework rate ≤",
    "cycle_time_p95": "Cycle time p95 ≤ takt",
    "aql": "AQL sampling plan: defects ≤",
    "throughput_per_hour": "Line throughput (units/h) ≥",
}


def _criterion_label(c: Criterion) -> str:
    if c.name in CRITERION_LABEL:
        return CRITERION_LABEL[c.name]
    if c.name.startswith("gauge_cg "):
        what = escape(c.name.removeprefix("gauge_cg "))
        return f"Gauge Cg and Cgk of <b>{what}</b> (golden sample) ≥"
    return f"Cpk lower 95 % bound of <b>{escape(c.name.removeprefix('cpk_lower_95 '))}</b> ≥"


def _header(report: Report, generated_at: datetime, protocol_name: str) -> list[str]:
    run = report.protocol.run
    title, summary = DECISION_TEXT[report.decision]
    results = [c.result.value for op in report.operations for c in op.criteria]
    results += [c.result.value for c in report.line_criteria]
    window = "—"
    if report.first_record and report.last_record:
        window = f"{report.first_record:%Y-%m-%d %H:%M} – {report.last_record:%Y-%m-%d %H:%M} UTC"
    meta = [
        ("Product", escape(run.product or "—")),
        ("Work orders", escape(", ".join(run.work_orders) or "any")),
        ("Serials", escape(run.serial_pattern or "any")),
        ("Records", window),
        ("Protocol", escape(protocol_name)),
        ("Generated", f"{generated_at:%Y-%m-%d %H:%M} UTC"),
    ]
    return [
        f"<header><h1>{escape(run.name)} — pilot-run report</h1>",
        '<table class="meta">'
        + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta)
        + "</table></header>",
        f'<section class="decision {report.decision.value}" id="decision">'
        f'<div class="verdict">{title}</div><div>{summary} '
        f"{results.count('pass')} passed, {results.count('fail')} failed, "
        f"{results.count('insufficient')} insufficient of {len(results)} criteria.</div></section>",
        '<div class="kpis">'
        + "".join(
            f'<div class="kpi"><div class="v">{v}</div><div class="k">{k}</div></div>'
            for v, k in (
                (str(report.units), "units in the run"),
                (_pct(report.rolled_throughput_yield), "rolled throughput yield"),
                (str(len(report.operations)), "operations"),
                (str(len(report.characteristics)), "characteristics"),
                (str(len(report.golden_serials)), "golden samples (apart)"),
            )
        )
        + "</div>",
    ]


def _criteria(report: Report) -> list[str]:
    rows = []
    for op in report.operations:
        for c in op.criteria:
            value, limit = _criterion_value(c)
            rows.append(
                _row(
                    [
                        _cell(escape(op.figures.operation)),
                        _cell(_criterion_label(c)),
                        _cell(limit, True),
                        _cell(value, True),
                        _cell(_badge(c.result.value)),
                        _cell(f'<span class="note">{escape(c.note)}</span>'),
                    ]
                )
            )
    for c in report.line_criteria:
        value, limit = _criterion_value(c)
        rows.append(
            _row(
                [
                    _cell("<i>line</i>"),
                    _cell(_criterion_label(c)),
                    _cell(limit, True),
                    _cell(value, True),
                    _cell(_badge(c.result.value)),
                    _cell(f'<span class="note">{escape(c.note)}</span>'),
                ]
            )
        )
    if not rows:
        return ["<h2>Exit criteria</h2><p>The protocol sets no exit criterion.</p>"]
    sizes = report.protocol.sample_sizes
    return [
        '<h2 id="criteria">Exit criteria</h2>',
        f'<p class="note">Fixed by the protocol before the run. Minimum sample sizes: '
        f"{sizes.min_units} units per operation for yields; {sizes.min_pieces} pieces in at "
        f"least {sizes.min_subgroups} subgroups (by {sizes.subgroup_by.value}) per "
        "characteristic. Capability is judged on the lower 95 % confidence bound of Cpk.</p>",
        '<table class="criteria">'
        + _head("Operation", "Criterion", "Limit", "Value", "Result", "Note", numeric_from=2)
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table>",
    ]


def _sampling_plans(report: Report) -> list[str]:
    """Each AQL plan in one line, with its operating characteristic in one figure."""
    lines = []
    for op in report.operations:
        a = op.aql
        if a is None:
            continue
        full = " (n reaches the lot: 100 % inspection)" if a.full_inspection else ""
        lines.append(
            f"<li><b>{escape(op.figures.operation)}</b>: AQL {a.aql:g} %, level {a.level}, lot "
            f"{a.lot_size}: code letter {a.code_letter}, n = {a.sample_size}, Ac {a.accept}, "
            f"Re {a.reject}{full}. Accepts a lot with {_pct(a.p50)} defective half of the time. "
            f"Sample: the first {a.sample_size} of {a.inspected} units inspected, "
            f"{a.defects} defective: <b>{a.verdict}</b>.</li>"
        )
    if not lines:
        return []
    return [
        '<h2 id="sampling">Sampling plans (MIL-STD-105E, normal inspection)</h2>',
        f"<ul class='plans'>{''.join(lines)}</ul>",
    ]


def _yields(report: Report) -> list[str]:
    rows = []
    for op in report.operations:
        f = op.figures
        rows.append(
            _row(
                [
                    _cell(escape(f.operation)),
                    _cell(str(f.units), True),
                    _cell(_pct(f.first_pass_yield), True),
                    _cell(_pct(f.final_yield), True),
                    _cell(_pct(f.scrap_rate), True),
                    _cell(_pct(f.rework_rate), True),
                    _cell(f"{f.retests} / {_pct(f.retest_pass_rate)}", True),
                    _cell(_s(f.cycle_time.mean), True),
                    _cell(_s(f.cycle_time.p50), True),
                    _cell(_s(f.cycle_time.p95), True),
                    _cell(_s(f.takt_s), True),
                ]
            )
        )
    out = [
        '<h2 id="yields">Yield, scrap, rework and cycle time by operation</h2>',
        '<table class="operations">'
        + _head(
            "Operation",
            "Units",
            "FPY",
            "Final yield",
            "Scrap",
            "Rework",
            "Retests / pass",
            "CT mean s",
            "CT p50 s",
            "CT p95 s",
            "Takt s",
        )
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table>",
        f'<p class="note">Rolled throughput yield (product of the first-pass yields): '
        f"<b>{_pct(report.rolled_throughput_yield)}</b>. FPY: first attempt passed; final yield: "
        "last attempt passed; a unit that failed and passed its retest counts against FPY only. "
        "Golden samples are left out.</p>",
    ]
    for op in report.operations:
        if op.figures.pareto:
            bars = op.figures.pareto
            out.append(
                f'<div class="block pareto"><h3>Failure Pareto — {escape(op.figures.operation)}'
                '</h3><div class="pareto-pair"><div>'
                + svg.pareto_chart(bars, op.figures.operation)
                + '</div><table class="pareto-table">'
                + _head("Failure code", "Count", "Share", "Cumulative")
                + "<tbody>"
                + "".join(
                    _row(
                        [
                            _cell(escape(b.code)),
                            _cell(str(b.count), True),
                            _cell(_pct(b.share), True),
                            _cell(_pct(b.cumulative), True),
                        ]
                    )
                    for b in bars
                )
                + "</tbody></table></div></div>"
            )
    return out


def _over(over: bool | None) -> str:
    """Against takt in a word and a symbol, not only a colour."""
    if over is None:
        return "—"
    return '<span class="v-fail">✗ over</span>' if over else '<span class="v-pass">✓ within</span>'


def line_sentence(report: Report) -> str:
    """The constraint in one sentence: what limits the line and what takt asks for."""
    line = report.line
    if line is None or line.constraint is None or line.throughput_per_hour is None:
        reason = line.reason if line is not None and line.reason else "no cycle time"
        return f"No operation can be named as the line's constraint: {reason}."
    sentence = (
        f"Operation {line.constraint} limits the line to "
        f"{_rate(line.throughput_per_hour)} units/h; "
    )
    takt_rate = per_hour(line.takt_s)
    if takt_rate is None:
        return sentence + "no takt is known."
    keeps = line.throughput_per_hour >= takt_rate
    state = "✓ the line keeps takt" if keeps else "✗ the line cannot keep takt"
    return sentence + f"takt allows {_rate(takt_rate)} units/h ({state})."


def _line_view(report: Report) -> list[str]:
    line = report.line
    if line is None or not line.operations:
        return []
    rows = []
    for f in line.operations:
        name = escape(f.operation)
        if f.operation == line.constraint:
            name += ' <b class="v-fail">▲ constraint</b>'
        rows.append(
            _row(
                [
                    _cell(name),
                    _cell(str(f.stations), True),
                    _cell(str(f.n), True),
                    _cell(_s(f.p50_s), True),
                    _cell(_s(f.p95_s), True),
                    _cell(_s(f.effective_p50_s), True),
                    _cell(_s(f.effective_p95_s), True),
                    _cell(_s(f.takt_s), True),
                    _cell(_over(f.over_takt_p50)),
                    _cell(_over(f.over_takt_p95)),
                ]
            )
        )
    wip_rows = [
        _row(
            [
                _cell(f"{escape(w.between[0])} → {escape(w.between[1])}"),
                _cell(str(w.units), True),
                _cell(_f(w.mean, 3), True),
                _cell("—" if w.max is None else str(w.max), True),
                _cell(_s(w.mean_wait_s), True),
                _cell(f'<span class="note">{escape(w.reason or "")}</span>'),
            ]
        )
        for w in line.wip
    ]
    wip = (
        '<table class="wip">'
        + _head("Between", "Units", "Mean WIP", "Max WIP", "Mean wait s", "Note", numeric_from=1)
        + "<tbody>"
        + "".join(wip_rows)
        + "</tbody></table>"
        + '<p class="note">Work in progress: units that had ended the first operation and not '
        "yet started the second, counted at every start and end, averaged over time. Units "
        "that never started the second (scrapped, still waiting) are left out. Mean WIP = "
        "units / span × mean wait (Little's law).</p>"
        if wip_rows
        else ""
    )
    return [
        '<section class="block line-view"><h2 id="line">Line: which operation limits it</h2>',
        f'<p class="line-sentence"><b>{escape(line_sentence(report))}</b></p>',
        svg.line_chart(line),
        '<table class="line-operations">'
        + _head(
            "Operation",
            "Stations",
            "n",
            "CT p50 s",
            "CT p95 s",
            "p50 / station",
            "p95 / station",
            "Takt s",
            "p50 vs takt",
            "p95 vs takt",
            numeric_from=1,
        )
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table>",
        '<p class="note">Stations: distinct stations (and rack slots) that recorded the '
        "operation, assumed to work in parallel the whole run; per station = cycle time / "
        "stations. The constraint has the highest p50 per station (a tie: the higher p95); the "
        "line makes at most 3600 / that p50 units per hour. Takt of the line: the shortest of "
        "the operations' takts.</p></section>",
        wip,
    ]


def _capability_summary(report: Report) -> list[str]:
    rows = []
    for c in report.characteristics:
        cap = c.capability
        result = _badge(c.criterion.result.value) if c.criterion else "—"
        rows.append(
            _row(
                [
                    _cell(escape(c.operation)),
                    _cell(
                        f'<a href="#{_anchor(c)}">{escape(c.name)}</a>'
                        + (" ◆" if c.critical else "")
                    ),
                    _cell(str(cap.n), True),
                    _cell(_f(cap.mean, 5), True),
                    _cell(_f(cap.sd_within), True),
                    _cell(_f(cap.sd_overall), True),
                    _cell(_idx(cap.cp), True),
                    _cell(_idx(cap.cpk), True),
                    _cell(_idx(cap.pp), True),
                    _cell(_idx(cap.ppk), True),
                    _cell(_idx(cap.cpk_lower_95), True),
                    _cell(_pct(cap.out_of_spec), True),
                    _cell(str(len(cap.violations)), True),
                    _cell(result),
                ]
            )
        )
    if not rows:
        return ['<h2 id="capability">Capability</h2><p>No characteristic was recorded.</p>']
    return [
        '<h2 id="capability" class="pagebreak">Capability</h2>',
        '<table class="capability">'
        + _head(
            "Operation",
            "Characteristic",
            "n",
            "Mean",
            "σ within",
            "σ overall",
            "Cp",
            "Cpk",
            "Pp",
            "Ppk",
            "Cpk 95 % low",
            "Out of spec",
            "Signals",
            "Result",
            numeric_from=2,
        )
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table>",
        '<p class="note">◆ critical characteristic. σ within = average moving range / 1.128; '
        "σ overall = sample standard deviation. Cpk 95 % low: Bissell's approximate one-sided "
        "lower confidence bound, Cpk − 1.645·√(1/(9n) + Cpk²/(2(n−1))). — : undefined (a limit "
        "missing, fewer than 2 values, or no spread). One value per unit: its first attempt.</p>",
    ]


def _characteristic(c: CharacteristicReport, base: str) -> str:
    cap = c.capability
    label = f"{c.operation} / {c.name}"
    stats = [
        ("n (missing)", f"{cap.n} ({cap.missing})"),
        ("Subgroups", str(cap.subgroups)),
        ("LSL / target / USL", f"{_f(cap.lsl, 5)} / {_f(c.target, 5)} / {_f(cap.usl, 5)}"),
        ("Mean", _f(cap.mean, 5)),
        ("σ within / overall", f"{_f(cap.sd_within)} / {_f(cap.sd_overall)}"),
        ("Cp / Cpk", f"{_idx(cap.cp)} / {_idx(cap.cpk)}"),
        ("Pp / Ppk", f"{_idx(cap.pp)} / {_idx(cap.ppk)}"),
        ("Cpk lower 95 %", _idx(cap.cpk_lower_95)),
        ("Out of spec", f"{cap.out_of_spec_count} ({_pct(cap.out_of_spec)})"),
    ]
    if c.control is not None:
        rules = ", ".join(map(str, c.control.rules))
        stats.append(
            (
                "In control",
                f"yes (rules {rules})" if c.control.in_control else f"no (rules {rules})",
            )
        )
    if c.criterion is not None:
        stats.append(
            ("Criterion", f"≥ {_idx(c.criterion.limit)} {_badge(c.criterion.result.value)}")
        )
    if cap.violations:
        by_rule: dict[int, list[str]] = {}
        for v in cap.violations:
            by_rule.setdefault(v.rule, []).append(unit_link(v.serial, base))
        items = "".join(
            _row(
                [
                    _cell(str(rule)),
                    _cell(escape(RULES[rule])),
                    _cell(str(len(links)), True),
                    _cell(", ".join(links[:12]) + (", …" if len(links) > 12 else "")),
                ]
            )
            for rule, links in sorted(by_rule.items())
        )
        violations = (
            '<table class="violations">'
            + _head("Rule", "Pattern", "Points", "Units (first 12; JSON lists all)", numeric_from=2)
            + f"<tbody>{items}</tbody></table>"
        )
    else:
        violations = '<p class="note">No Western Electric rule 1–4 signal.</p>'
    warning = ""
    if c.control is not None and not c.control.in_control:
        warning = f'<p class="warning">{escape(NOT_A_PREDICTION)}</p>'
    return (
        f'<section class="block characteristic" id="{_anchor(c)}">'
        f"<h3>{escape(label)}{' ◆ critical' if c.critical else ''}</h3>"
        + warning
        + '<div class="top"><table class="stats">'
        + "".join(f"<tr><th>{k}</th><td class='num'>{v}</td></tr>" for k, v in stats)
        + "</table>"
        + f"<div>{svg.histogram(cap, label, c.target)}</div></div>"
        + svg.individuals_chart(cap, label)
        + svg.moving_range_chart(cap, label)
        + violations
        + "</section>"
    )


def _of_tolerance(drift: float, c: CharacteristicReport) -> float | None:
    lsl, usl = c.capability.lsl, c.capability.usl
    return abs(drift) / (usl - lsl) if lsl is not None and usl is not None and usl > lsl else None


def _golden(report: Report, base: str) -> list[str]:
    rows = [
        _row(
            [
                _cell(escape(f"{c.operation} / {c.name}")),
                _cell(unit_link(g.serial, base)),
                _cell(str(g.n), True),
                _cell(_f(g.first, 5), True),
                _cell(_f(g.last, 5), True),
                _cell(_f(g.drift, 3), True),
                _cell(_pct(_of_tolerance(g.drift, c)), True),
                _cell(f"{_f(g.minimum, 5)} – {_f(g.maximum, 5)}", True),
                _cell(str(g.out_of_spec), True),
            ]
        )
        for c in report.characteristics
        for g in c.golden
    ]
    intro = (
        '<p class="note">Golden samples are references re-measured during the run; they are left '
        "out of every yield and capability figure above. A drift or an out-of-spec value points "
        "at the tester, not at the product.</p>"
    )
    if not rows:
        return ['<h2 id="golden">Golden samples</h2>', intro, "<p>No golden sample measured.</p>"]
    return [
        '<h2 id="golden">Golden samples</h2>',
        intro,
        '<table class="golden">'
        + _head(
            "Characteristic",
            "Serial",
            "n",
            "First",
            "Last",
            "Drift",
            "Drift / tolerance",
            "Range",
            "Out of spec",
            numeric_from=2,
        )
        + "<tbody>"
        + "".join(rows)
        + "</tbody></table>",
    ]


def _units(report: Report, base: str) -> list[str]:
    """Units that need a look (a retest, a verdict other than pass, an operation not reached)
    in a table; then every unit of the run as a compact list of links."""
    operations = [op.figures.operation for op in report.operations]
    rows = []
    for serial, work_order, verdicts in report.unit_rows:
        routine = all(
            verdicts.get(operation, ("", 0))[0] == "pass" and verdicts[operation][1] == 1
            for operation in operations
        )
        if routine:
            continue
        cells = [_cell(unit_link(serial, base)), _cell(escape(work_order or "—"))]
        for operation in operations:
            verdict, attempts = verdicts.get(operation, ("", 0))
            shown = f"{verdict}" + (f" ({attempts})" if attempts > 1 else "")
            cells.append(f'<td class="v-{escape(verdict)}">{escape(shown) or "—"}</td>')
        rows.append(_row(cells))
    table = '<p class="note">Every unit passed every operation at its first attempt.</p>'
    if rows:
        table = (
            '<table class="units-table">'
            + _head("Serial", "Work order", *operations, numeric_from=99)
            + "<tbody>"
            + "".join(rows)
            + "</tbody></table>"
        )
    links = ", ".join(unit_link(serial, base) for serial, _, _ in report.unit_rows)
    return [
        '<h2 id="units" class="pagebreak">Units of the run</h2>',
        '<p class="note">Each serial links to its genealogy: every operation, attempt, '
        "characteristic and reading of that unit.</p>",
        f"<h3>Units with a retest, a failure or an open operation ({len(rows)})</h3>",
        '<p class="note">Final verdict per operation, with the number of attempts when '
        "retested; — : no record of that operation.</p>",
        table,
        f"<h3>All units ({len(report.unit_rows)})</h3>",
        f'<p class="all-units">{links or "—"}</p>',
    ]


def _signoff(report: Report) -> list[str]:
    rows = "".join(
        f"<tr><td>{escape(function)}</td><td></td><td></td><td></td></tr>"
        for function in report.protocol.signoff
    )
    return [
        '<section class="block"><h2 id="signoff">Go / No-Go sign-off</h2>',
        f"<p>Decision of the data: <b>{DECISION_TEXT[report.decision][0]}</b>.</p>",
        '<table class="sign">'
        + _head("Function", "Name", "Decision and signature", "Date", numeric_from=99)
        + f"<tbody>{rows}</tbody></table></section>",
        '<p class="note">Method: docs/statistics.md of the shopfloor collector (formulas and '
        "sources). Capability assumes independent, normally distributed values from a stable "
        "process: read the control charts with the indices.</p>",
    ]


def render_html(
    report: Report,
    generated_at: datetime,
    protocol_name: str = "",
    unit_base: str = "",
    *,
    record: Sequence[str] | None = None,
) -> bytes:
    """The whole report as one HTML document. Unit links go to ``{unit_base}/units/{serial}``.
    ``record``: the pilot record's sections (store/record/html.py), shown in place of the
    empty signature lines."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.protocol.run.name)} — pilot-run report</title>",
        f"<style>{CSS}</style></head><body>",
        *_header(report, generated_at, protocol_name),
        *_criteria(report),
        *_sampling_plans(report),
        *_yields(report),
        *_line_view(report),
        *_capability_summary(report),
        *(_characteristic(c, unit_base) for c in report.characteristics),
        *_golden(report, unit_base),
        *gauge_section(report),
        *resources_section(report),
        *(_signoff(report) if record is None else record),
        *_units(report, unit_base),
        "</body></html>",
    ]
    return "\n".join(parts).encode("utf-8")
