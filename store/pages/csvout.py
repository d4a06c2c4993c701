"""Unit records as CSV, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from store.genealogy import UNIT_FIELDS

#: A cell starting with one of these is a formula to a spreadsheet (CSV injection): a serial
#: or work order typed as "=HYPERLINK(...)" must stay text, so it gets a leading quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)  # a unit's resources
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def rows_csv(fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([safe_cell(row[name]) for name in fields])
    return out.getvalue()


def units_csv(rows: Iterable[dict[str, Any]]) -> str:
    return rows_csv(UNIT_FIELDS, rows)
