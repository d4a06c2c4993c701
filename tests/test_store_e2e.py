"""The whole chain with real parts: pymodbus simulator -> collector -> mosquitto -> store
(a subprocess) -> SQLite / PostgreSQL, read back by unit over HTTP and on the command line.
A witness subscriber records what the collector published, to compare with what was stored."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from store.db import connect
from tests.helpers import (
    Mosquitto,
    RunningService,
    Subscriber,
    async_wait_until,
    config_dict,
    set_tester,
)
from tests.store_fixtures import StoreProcess


def stored_count(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM readings").scalar_one())
    except sa.exc.SQLAlchemyError:
        return 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "store", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow_on_postgresql
async def test_collector_stream_is_stored_and_found_by_unit(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    db_url: str,
    tmp_path: Path,
) -> None:
    store = StoreProcess(tmp_path / "store", mosquitto, db_url)
    store.start()
    witness = Subscriber(mosquitto, "collector/plant-a/line-1/pc1/#", client_id="witness")
    try:
        # The collector's default stream: values by position, resolved through the tag
        # metadata the store keeps.
        config = Config.model_validate(
            config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
        )
        await set_tester(modbus_server, config, voltage=12.25, serial="SN0001", result=0)
        async with RunningService(config):
            await async_wait_until(lambda: len(witness.readings()) >= 30, 15, "30 readings")
            await set_tester(modbus_server, config, serial="SN0002", voltage=11.5)
            await async_wait_until(
                lambda: witness.payloads("/units"), 15, "the unit record of SN0001"
            )
        published = {r["seq"]: r for r in witness.readings()}
        polls = [poll for p in witness.payloads() for poll in p["polls"]]
        # all by position, each naming its device by its meta version
        assert all("v" in poll and "device" not in poll for poll in polls), polls[:3]
        engine = connect(db_url)
        await async_wait_until(
            lambda: stored_count(engine) == len(published), 30, "every published reading"
        )
        assert stored_count(engine) == max(published) == len(published)

        found = (await asyncio.to_thread(store.get, "/units/SN0001")).json()
        ((unit,),) = [p["units"] for p in witness.payloads("/units")]
        (op,) = found["operations"]
        assert (op["serial"], op["seq"], op["operation"], op["station"], op["attempt"]) == (
            "SN0001", unit["seq"], "functional-test", "ft-1", 1,
        )  # fmt: skip
        assert (op["ended_by"], op["verdict"], op["readings"]) == (
            "next_serial", unit["verdict"], unit["readings"],
        )  # fmt: skip
        expect = sorted(s for s, r in published.items() if r["unit_serial"] == "SN0001")
        assert [r["seq"] for r in found["readings"]] == expect
        # Schema 2 sends each tag's engineering unit once, in the retained meta/{device}
        # message, and the store gives it to the tag's readings.
        units = {
            (meta["device"], tag): fields["unit"]
            for meta in witness.metas()
            for tag, fields in meta["tags"].items()
        }
        for got in found["readings"]:
            sent = published[got["seq"]]
            for key in ("device", "tag", "value", "quality", "station", "attempt"):
                assert got[key] == sent[key], (key, got, sent)
            # The same instant (sent to the millisecond, shown by the store with microseconds).
            assert datetime.fromisoformat(got["ts"]) == datetime.fromisoformat(sent["ts"])
            assert got["unit"] == units[sent["device"], sent["tag"]], got
        times = [r["ts"] for r in found["readings"]]
        assert times == sorted(times)

        page = await asyncio.to_thread(
            store.get, "/units/SN0001", headers={"Accept": "text/html,application/xhtml+xml"}
        )
        assert page.headers["content-type"].startswith("text/html")
        assert 'id="unit-page"' in page.text  # its content: tests/test_pages.py
        missing = await asyncio.to_thread(store.get, "/units/NOPE")
        assert missing.status_code == 404
        search = (await asyncio.to_thread(store.get, "/units?serial=SN*")).json()
        assert [u["serial"] for u in search] == ["SN0001"]

        shown = await asyncio.to_thread(cli, "unit", "SN0001", "--db", db_url)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == found
        out = await asyncio.to_thread(
            cli, "unit", "SN0001", "--db", db_url, "--csv", str(tmp_path / "lab")
        )
        assert out.returncode == 0, out.stderr
        with (tmp_path / "lab" / "SN0001-readings.csv").open() as f:
            assert [int(r["seq"]) for r in csv.DictReader(f)] == expect
        gaps = await asyncio.to_thread(cli, "gaps", "--db", db_url, "--json")
        assert gaps.returncode == 0, gaps.stderr
        streams: list[dict[str, Any]] = json.loads(gaps.stdout)
        assert [(s["kind"], s["high_water"], s["missing_seqs"]) for s in streams] == [
            ("readings", max(published), 0), ("units", unit["seq"], 0),
        ]  # fmt: skip
    finally:
        witness.close()
        await asyncio.to_thread(store.stop)
