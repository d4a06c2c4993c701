"""The unit search's query fields, shared by ``GET /units`` (JSON) and ``GET /units.csv``."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import HTTPException, Query

from store.genealogy import UnitQuery
from store.record.bodies import DISPOSITIONS
from store.record.deviations import SEVERITIES

DEVIATION_CHOICES = ("any", *SEVERITIES)
DISPOSITION_CHOICES = ("none", *DISPOSITIONS)


def unit_query(  # noqa: PLR0917 - FastAPI maps each parameter to a query field
    serial: str | None = None,
    operation: str | None = None,
    verdict: str | None = None,
    work_order: str | None = None,
    golden: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(default=1000, ge=1, le=100_000),
    attempt: int | None = Query(default=None, ge=1),
    disposition: str | None = None,
    deviation: str | None = None,
    out_of_spec: str | None = None,
) -> UnitQuery:
    """A UnitQuery from the URL. An empty field is no filter (a bookmarked form may hold
    ``verdict=``); an unknown disposition or severity is 422 naming the choices."""
    if disposition and disposition not in DISPOSITION_CHOICES:
        raise HTTPException(
            422, f"disposition {disposition!r}: one of {', '.join(DISPOSITION_CHOICES)}"
        )
    if deviation and deviation not in DEVIATION_CHOICES:
        raise HTTPException(422, f"deviation {deviation!r}: one of {', '.join(DEVIATION_CHOICES)}")
    return UnitQuery(
        serial=serial or None,
        operation=operation or None,
        verdict=verdict or None,
        work_order=work_order or None,
        golden=golden,
        since=_aware(since),
        until=_aware(until),
        limit=limit,
        attempt=attempt,
        disposition=disposition or None,
        deviation=deviation or None,
        out_of_spec=out_of_spec or None,
    )


def _aware(value: datetime | None) -> datetime | None:
    """A time without a zone is UTC (the page says so next to its fields)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
