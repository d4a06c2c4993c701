"""A run's report as one HTML page (``GET /runs/{id}/report?format=html``): store/report's page
for the run's protocol version, its empty signature lines replaced by the record: the sign-off
state and every signature (name, function, decision, reason, time, meaning; overrides and
signatures on an earlier state of the data flagged), the protocol version and its approvals
(each before or after the first unit record, in words), the deviations (where they were
recorded, open or closed), the allocation of the units against the protocol's requirements,
and the audit trail's line. Self-contained like store/report's page: inline CSS and SVG, no
script; every value from the record is escaped."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

import sqlalchemy as sa

from store.record.report import build_run_report
from store.report.page import render_html, unit_link

#: The page holds no script and loads nothing: its own inline style and SVG, nothing else.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
STATE_WORDS = {"go": "✓ GO", "no-go": "✗ NO-GO", "awaiting": "⏳ AWAITING"}


def run_report_html(
    engine: sa.Engine, run_id: int, version: int | None = None, unit_base: str = ""
) -> bytes:
    doc, report, generated_at = build_run_report(engine, run_id, version)
    version_text = f"run {run_id}, protocol version {doc['protocol_version']['version']}"
    return render_html(
        report, generated_at, version_text, unit_base, record=sections(doc, unit_base)
    )


def _e(value: Any) -> str:
    return "—" if value is None or value == "" else escape(str(value))


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], css: str = "") -> str:
    heads = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>'


def sections(doc: dict[str, Any], unit_base: str = "") -> list[str]:
    """The record's sections of the page, from the report's JSON (``doc``)."""
    return [
        *_signoffs(doc),
        *_approvals(doc),
        *_deviations(doc, unit_base),
        *_allocation(doc, unit_base),
        _audit(doc),
    ]


def _signoffs(doc: dict[str, Any]) -> list[str]:
    state = doc["state"]
    rows = []
    for s in doc["signoffs"]:
        flags = []
        if s["override"]:
            flags.append("⚠ OVERRIDE")
        if s["stale"]:
            flags.append("⚠ given on an earlier state of the data")
        if not s["current_version"]:
            flags.append(f"on version {s['version']}, not the one judged")
        rows.append((
            _e(s["function"]), _e(s["person"]), f"<b>{_e(s['decision'].upper())}</b>",
            _e(s["reason"]), _e(s["at"]), _e("; ".join(flags) or None),
            f'<span class="note">{_e(s["meaning"])}</span>',
        ))  # fmt: skip
    awaiting = [(escape(f), "—", "awaiting", "", "", "", "") for f in doc["awaiting"]]
    return [
        '<section class="block"><h2 id="signoff">Go / No-Go sign-off</h2>',
        f'<p id="run-state"><b>{STATE_WORDS.get(state, escape(state))}</b>: '
        f"{_e(doc['state_words'])}.</p>",
        _table(
            ("Function", "Name", "Decision", "Reason", "Signed at (UTC)", "Flags", "Meaning"),
            [*rows, *awaiting],
            "sign signoffs",
        ),
        "</section>",
    ]


def _approvals(doc: dict[str, Any]) -> list[str]:
    version, approvals = doc["protocol_version"], doc["approvals"]
    rows = [
        (_e(a["function"]), _e(a["person"]), _e(a["decision"]), _e(a["reason"]), _e(a["at"]))
        for a in approvals["history"]
    ]
    notes = "".join(f"<li>{_e(n)}</li>" for n in approvals["notes"])
    return [
        '<section class="block"><h2 id="approvals">Protocol version and approvals</h2>',
        f"<p>Run {_e(version['run'])} (id {_e(version['run_id'])}), protocol version "
        f"{_e(version['version'])} of {_e(version['latest_version'])}, SHA-256 "
        f"<code>{_e(version['sha256'])}</code>, created {_e(version['created_at'])} by "
        f"{_e(version['created_by'])}.</p>",
        f'<ul id="approval-notes">{notes}</ul>',
        _table(("Function", "Person", "Decision", "Reason", "At (UTC)"), rows, "approvals"),
        "</section>",
    ]


def _deviations(doc: dict[str, Any], unit_base: str) -> list[str]:
    section = doc["deviations"]
    rows = []
    for d in section["items"]:
        where = " / ".join(str(x) for x in (d["station"], d["operation"], d["device"]) if x)
        units = ", ".join(unit_link(s, unit_base) for s in d["serials"])
        if d["window"] is not None:
            window = f"{_e(d['window']['start'])} – {_e(d['window']['end'])}"
            units = f"{units}; {window}" if units else window
        source = (
            f"line PC {_e(d['collector'])}, recorded {_e(d['recorded_at'])}"
            if d.get("collector") else "office"
        )  # fmt: skip
        closed = d["closed"]
        status = "open"
        if closed is not None:
            status = (f"closed {_e(closed['at'])} by {_e(closed['person'])}: cause "
                      f"{_e(closed['cause'])}; action {_e(closed['action'])}")  # fmt: skip
        rows.append((
            _e(d["id"]), _e(d["severity"]), _e(d["description"]), _e(where or None),
            units or "—", _e(d["action"]), f"{_e(d['who'])} ({source})", status,
        ))  # fmt: skip
    counts = ", ".join(f"{k} {v}" for k, v in section["by_severity"].items())
    opened = ", ".join(f"{k} {v}" for k, v in section["open_by_severity"].items())
    return [
        '<section class="block"><h2 id="deviations">Deviations</h2>',
        f"<p>{section['count']} deviation(s): {escape(counts)}; open: {escape(opened)}.</p>",
        _table(
            ("Id", "Severity", "What happened", "Where", "Units", "Action", "Who", "Status"),
            rows,
            "deviations-table",
        ),
        "</section>",
    ]


def _allocation(doc: dict[str, Any], unit_base: str) -> list[str]:
    allocation = doc["allocation"]
    rows = [
        (escape(kind), str(count),
         ", ".join(unit_link(s, unit_base) for s in allocation["serials"].get(kind, [])) or "—")
        for kind, count in allocation["units"].items() if count
    ]  # fmt: skip
    criteria = [
        (_e(c["name"]), _e(c.get("value")), _e(c.get("limit")), _e(c["result"]))
        for c in allocation["criteria"]
    ]
    users = ", ".join(allocation["field_test_users"]) or None
    return [
        '<section class="block"><h2 id="allocation">Where the units went</h2>',
        f"<p>{allocation['unallocated']} unit(s) not allocated; field-test users: "
        f"{_e(users)}.</p>",
        _table(("Disposition", "Units", "Serials"), rows, "allocation"),
        _table(("Requirement", "Value", "Limit", "Result"), criteria, "allocation-criteria")
        if criteria else "",
        "</section>",
    ]  # fmt: skip


def _audit(doc: dict[str, Any]) -> str:
    audit = doc["audit"]
    if audit["verified"]:
        words = (f"audit trail verified, {audit['entries']} entries, last hash "
                 f"<code>{_e(audit['last_hash'])}</code>")  # fmt: skip
    else:
        words = (f"⚠ audit trail BROKEN at entry {_e(audit['first_bad_id'])}: "
                 f"{_e(audit['why'])}")  # fmt: skip
    return f'<p id="audit" class="block">{words}.</p>'
