"""The HTML sections of the analyses beside the exit criteria: results by resource (operator,
fixture, cavity, program) with the sentences naming a resource that differs, and the gauge
check from the golden samples with the sentence on measurement versus process."""

from __future__ import annotations

from html import escape

from store.report.evaluate import Report
from store.report.resources import ResourceSplit, Test

TEST_NAMES = {
    "fisher_exact": "Fisher's exact test",
    "chi_square": "chi-square test",
    "welch_anova": "Welch's ANOVA",
}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _g(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _p(test: Test | None) -> str:
    if test is None:
        return "—"
    def shown(p: float) -> str:
        return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"

    adjusted = "" if test.p_adjusted is None else f" (Holm-adjusted {shown(test.p_adjusted)})"
    return f"{TEST_NAMES.get(test.name, test.name)}: p = {shown(test.p_value)}{adjusted}"


def _split(s: ResourceSplit) -> str:
    names = [c.name for c in (s.groups[0].characteristics if s.groups else ())]
    head = "".join(f'<th class="num">{escape(n)}: mean / Cpk</th>' for n in names)
    rows = []
    for g in s.groups:
        fpy = g.first_pass_yield
        interval = "—" if fpy is None else f"{_pct(fpy.lower)} – {_pct(fpy.upper)}"
        cells = "".join(
            f'<td class="num">{_g(c.mean)} / {_g(c.cpk, 3)}</td>' for c in g.characteristics
        )
        rows.append(
            f"<tr><td>{escape(g.value)}</td><td class='num'>{g.units}</td>"
            f"<td class='num'>{_pct(None if fpy is None else fpy.estimate)}</td>"
            f"<td class='num'>{interval}</td>{cells}</tr>"
        )
    tests = [f"yields: {_p(s.yield_test)}" + (f" ({escape(s.yield_note)})" if s.yield_note else "")]
    tests += [
        f"{escape(m.characteristic)}: {_p(m.test) if m.test else escape(m.note)}" for m in s.means
    ]
    without = f"; {s.without} unit(s) without a {escape(s.kind)}" if s.without else ""
    findings = "".join(f'<p class="finding">{escape(f)}</p>' for f in s.findings)
    return (
        f'<div class="block resource" data-operation="{escape(s.operation)}" '
        f'data-kind="{escape(s.kind)}"><h3>{escape(s.operation)} — by {escape(s.kind)}</h3>'
        '<table class="resources"><thead><tr><th>Value</th><th class="num">Units</th>'
        '<th class="num">FPY</th><th class="num">FPY 95 % (Wilson)</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">Tests for a difference: {"; ".join(tests)}{without}.</p>{findings}</div>'
    )


def resources_section(report: Report) -> list[str]:
    if not report.resources:
        return []
    findings = [f for s in report.resources for f in s.findings]
    summary = (
        "".join(f'<li class="finding">{escape(f)}</li>' for f in findings)
        if findings
        else "<li>No resource differs at the 1 % level.</li>"
    )
    return [
        '<h2 id="resources">Results by resource</h2>',
        '<p class="note">Per operation and resource kind, each unit counted once by its first '
        "attempt; first-pass yield with its 95 % Wilson interval, each critical characteristic's "
        "mean and Cpk per value. Yields are compared with Fisher's exact test (two values) or the "
        "chi-square test (more), means with Welch's ANOVA; a resource is named when the test's "
        "p, adjusted by Holm's method for every test of this section, is below 0.01 (so the "
        "chance of naming any resource by chance stays at most 1 %).</p>",
        f'<ul class="findings" id="resource-findings">{summary}</ul>',
        *(_split(s) for s in report.resources),
    ]


def gauge_section(report: Report) -> list[str]:
    if not report.gauges:
        return []
    rows = []
    for g in report.gauges:
        st = g.study
        rows.append(
            f"<tr><td>{escape(g.operation)} / {escape(g.characteristic)}</td>"
            f"<td>{escape(g.serial)}</td><td class='num'>{_g(g.reference, 6)}</td>"
            f"<td class='num'>{'—' if st is None else st.n}</td>"
            f"<td class='num'>{_g(None if st is None else st.bias, 3)}</td>"
            f"<td class='num'>{_g(None if st is None else st.p_value, 2)}</td>"
            f"<td class='num'>{_g(None if st is None else st.cg, 3)}</td>"
            f"<td class='num'>{_g(None if st is None else st.cgk, 3)}</td>"
            f"<td class='num'>{_g(g.limit, 3)}</td>"
            f'<td><span class="badge {g.result}">{g.result}</span></td></tr>'
        )
    notes = "".join(
        f'<p class="finding measurement">{escape(n)}</p>' for n in report.measurement_notes
    )
    return [
        '<h2 id="gauge">Gauge check from the golden samples (type-1 study)</h2>',
        '<p class="note">Cg = 0.2·T / (6·s), Cgk = (0.1·T − |x̄ − x_ref|) / (3·s) over the golden '
        "sample's repeated measurements (T = USL − LSL); bias x̄ − x_ref with a two-sided "
        "t-test. Both Cg and Cgk must reach the protocol's minimum.</p>",
        '<table class="gauge"><thead><tr><th>Characteristic</th><th>Golden sample</th>'
        '<th class="num">Reference</th><th class="num">n</th><th class="num">Bias</th>'
        '<th class="num">p (bias)</th><th class="num">Cg</th><th class="num">Cgk</th>'
        '<th class="num">Minimum</th><th>Result</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>",
        notes,
    ]
