"""``render_report(engine, protocol, fmt)``: the one call the CLI and the store's web app make."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa

from store.report.as_json import render_json
from store.report.evaluate import Report, evaluate
from store.report.load import load_run
from store.report.page import render_html
from store.report.protocol import Protocol


class Format(StrEnum):
    HTML = "html"
    JSON = "json"


def build_report(engine: sa.Engine, protocol: Protocol) -> Report:
    """Load the run the protocol selects and judge it."""
    return evaluate(load_run(engine, protocol.run), protocol)


def render_report(
    engine: sa.Engine,
    protocol: Protocol,
    fmt: Format | str,
    *,
    protocol_name: str = "",
    unit_base: str = "",
    now: datetime | None = None,
) -> bytes:
    """The report as bytes: ``html`` (one self-contained page) or ``json`` (docs/report.md).

    ``unit_base`` prefixes the genealogy links (``{unit_base}/units/{serial}``): empty for the
    store's own web app, the store's URL for a file handed out. ``protocol_name`` is shown in
    the header (the protocol file's name).
    """
    fmt = Format(fmt)
    report = build_report(engine, protocol)
    generated_at = now or datetime.now(UTC)
    if fmt is Format.JSON:
        return render_json(report, generated_at)
    return render_html(report, generated_at, protocol_name, unit_base)
