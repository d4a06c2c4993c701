"""The store's HTTP API in process (FastAPI's test client over a real SQLite file): the
genealogy as JSON and as a page, a serial with a slash, search filters, /health and /metrics
of a store that is not connected to a broker."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from contract.encode import build_message, encode_unit, with_seq
from contract.records import UnitRecord
from store.api import create_app
from store.config import parse_store_config
from store.db import connect, create_schema
from store.ingest import Incoming
from store.service import StoreService

T0 = 1_795_255_200.0


def unit(seq: int, serial: str, verdict: str, work_order: str | None = None) -> Incoming:
    record = UnitRecord(
        serial=serial, station="ft-1", operation="functional-test", attempt=1,
        start_ts=T0 + seq, end_ts=T0 + seq + 30, ended_by="verdict", verdict=verdict,
        failure_code=None, readings=0, characteristics={"v": (1.0, 0.5, 1.5)},
        work_order=work_order,
    )  # fmt: skip
    body = encode_unit(record)
    payload = build_message("pc1", with_seq([(seq, body)]), b"units")
    return Incoming("collector/s/l/pc1/units", payload)


def test_api_over_a_real_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = connect(url)
    create_schema(engine)
    service = StoreService(parse_store_config(f"database: {{url: '{url}'}}\n"), engine)
    result = service.writer.write(
        [unit(1, "A/B-1", "pass"), unit(2, "PILOT-2", "fail", "WO-7"), unit(3, "PILOT-3", "pass")]
    )
    assert result.quarantined == []
    client = TestClient(create_app(service))

    found = client.get("/units/A%2FB-1")
    assert found.status_code == 200
    assert found.headers["content-type"] == "application/json"
    assert found.json()["operations"][0]["serial"] == "A/B-1"
    assert found.json()["operations"][0]["characteristics"][0]["name"] == "v"
    page = client.get("/units/A%2FB-1", headers={"Accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="unit-page"' in page.text  # store/pages' unit page: tests/test_pages.py
    assert client.get("/units/NONE").status_code == 404

    def serials(query: str) -> list[str]:
        return [u["serial"] for u in client.get(f"/units?{query}").json()]

    assert serials("serial=PILOT-*") == ["PILOT-3", "PILOT-2"]
    assert serials("verdict=fail") == ["PILOT-2"]
    assert serials("work_order=WO-7") == ["PILOT-2"]
    assert serials("golden=false&limit=1") == ["PILOT-3"]
    assert serials("since=2026-11-21T10:00:32.5Z") == ["PILOT-3"]  # ends at T0 + seq + 30
    assert client.get("/units?limit=0").status_code == 422

    health = client.get("/health")
    assert health.status_code == 503  # never connected to a broker
    assert health.json()["problems"] == ["broker: not connected yet"]
    assert health.json()["database"]["ok"] is True
    metrics = client.get("/metrics").text
    assert 'store_high_water_seq{collector="pc1",kind="units",outbox=""} 3.0' in metrics
    assert "store_db_up 1.0" in metrics
