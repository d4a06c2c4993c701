"""The pilot-run report: a protocol file fixes the run and its exit criteria; the figures come
from the store's tables through quality/; the gate says go, no-go or insufficient.

    protocol.py   the protocol file (YAML, validated, FILE:LINE errors)
    load.py       the run's unit records and characteristic values from the store
    evaluate.py   figures and criteria -> decision (pure)

docs/report.md documents the protocol, the JSON and the HTML.
"""
