"""GET /report of the store's web app, over real HTTP: the store as a process, a real
mosquitto, unit records published as a collector does; the protocol named in store.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from common.errors import ConfigError
from store.api import create_app
from store.config import load_store_config, parse_store_config
from store.db import create_schema
from store.service import StoreService
from tests.helpers import Mosquitto, wait_until
from tests.store_fixtures import PILOT_PROTOCOL, StoreProcess, publish_pilot_run


def test_report_is_served_from_the_stored_run(mosquitto: Mosquitto, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "pilot.yaml").write_text(yaml.safe_dump(PILOT_PROTOCOL))
    store = StoreProcess(
        tmp_path / "store",
        mosquitto,
        f"sqlite:///{tmp_path / 'store.db'}",
        report={"protocol": "pilot.yaml"},  # relative to store.yaml's folder
    )
    store.start()
    try:
        published = publish_pilot_run(mosquitto)
        wait_until(
            lambda: store.health()["ingest"]["units_inserted"] == published, 20, "units stored"
        )

        doc = store.get("/report?format=json")
        assert doc.status_code == 200
        assert doc.headers["content-type"] == "application/json"
        report = doc.json()
        assert report["title"] == "Pilot run T"
        assert report["units"] == 12
        assert report["golden_units"] == ["GOLD-1"]
        (operation,) = report["operations"]
        assert operation["operation"] == "functional-test"
        assert operation["first_pass_yield"] == pytest.approx(11 / 12)
        assert operation["final_yield"] == 1.0
        assert operation["retests"] == 1
        assert [p["code"] for p in operation["pareto"]] == ["204"]
        (current,) = report["characteristics"]
        assert (current["name"], current["n"], current["lsl"], current["usl"]) == (
            "current", 12, 1.0, 2.0,
        )  # fmt: skip
        assert current["critical"] is True
        assert report["decision"] in ("go", "no-go", "insufficient")
        results = {c["name"]: c["result"] for c in operation["criteria"]}
        assert results["first_pass_yield"] == "pass"  # 0.917 >= 0.9

        page = store.get("/report")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "Pilot run T" in page.text
        assert "pilot.yaml" in page.text
        # Each unit link goes to the store's own genealogy page, which shows that unit.
        links = re.findall(r'<a class="unit" href="([^"]+)">([^<]+)</a>', page.text)
        assert ("/units/PILOT-03", "PILOT-03") in links
        unit = store.get("/units/PILOT-03", headers={"Accept": "text/html"})
        assert unit.status_code == 200
        assert 'id="unit-page"' in unit.text  # the page in a browser: tests/test_pages.py

        assert store.get("/report?format=pdf").status_code == 422
        # Read-only: no other method.
        assert httpx_post(store, "/report") == 405
    finally:
        store.stop()


def httpx_post(store: StoreProcess, path: str) -> int:
    import httpx

    return httpx.post(f"http://127.0.0.1:{store.port}{path}", timeout=10).status_code


def test_report_without_a_protocol_is_404_and_says_what_to_set(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    service = StoreService(parse_store_config(f"database: {{url: '{url}'}}\n"))
    client = TestClient(create_app(service))
    answer = client.get("/report")
    assert answer.status_code == 404
    assert "report.protocol" in answer.json()["detail"]


def test_a_broken_protocol_stops_the_config_and_an_edited_one_is_shown(tmp_path: Path) -> None:
    protocol = tmp_path / "pilot.yaml"
    protocol.write_text("run:\n  name: P\nsample_sizes:\n  min_units: 0\n")
    config = tmp_path / "store.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{tmp_path / 's.db'}'}}\n"
                      "report: {protocol: pilot.yaml}\n")  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        load_store_config(config)
    assert raised.value.problems[0].startswith(f"{protocol}:4: sample_sizes.min_units:")

    protocol.write_text("run: {name: P}\n")
    loaded = load_store_config(config)
    assert loaded.report is not None
    assert loaded.report.protocol == protocol
    service = StoreService(loaded)
    create_schema(service.engine)
    client = TestClient(create_app(service))
    assert "<title>" in client.get("/report").text
    protocol.write_text("run: {name: [P]}\n")  # broken after start: said, not a traceback
    answer = client.get("/report")
    assert answer.status_code == 500
    assert answer.text.startswith(f"{protocol}:1: run.name:")
