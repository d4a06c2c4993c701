"""The pilot-run report: a protocol file fixes the run and its exit criteria; the figures come
from the store's tables through quality/; the gate says go, no-go or insufficient.

    protocol.py   the protocol file (YAML, validated, FILE:LINE errors)
    load.py       the run's unit records and characteristic values from the store
    evaluate.py   figures and criteria -> decision (pure)
    as_json.py    the JSON rendering;  page.py + svg.py  the HTML page and its inline charts
    render.py     render_report(engine, protocol, fmt): what the CLI and the web app call
    cli.py        `collector store report` (add_arguments / run)

docs/report.md documents the protocol, the JSON and the HTML.
"""

from store.report.protocol import Protocol, load_protocol, parse_protocol
from store.report.render import Format, build_report, render_report

__all__ = ["Format", "Protocol", "build_report", "load_protocol", "parse_protocol", "render_report"]
