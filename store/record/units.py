"""What the record adds to a unit's genealogy: the deviations that concern it, its
dispositions (the last is current) and the remarks on it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from store.record import deviations, dispositions


def unit_record(engine: sa.Engine, serial: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    with engine.connect() as conn:
        found = deviations.for_unit(deviations.of_run(conn), serial, records)
        placed, remarks = dispositions.of_unit(conn, serial)
    return {
        "deviations": found,
        "dispositions": placed,
        "disposition": placed[-1]["disposition"] if placed else None,
        "remarks": remarks,
    }
