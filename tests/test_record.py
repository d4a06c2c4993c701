"""The pilot run as a record (store/record, docs/pilot-record.md), end to end over HTTP
(FastAPI's test client) on a real SQLite file and the real PostgreSQL: people and tokens,
runs and protocol versions, approvals, deviations, dispositions, remarks, sign-offs, the
run's report, bad input, and the audit chain catching changes made behind the store's back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from common.errors import ConfigError
from contract.encode import build_message, encode_unit, with_seq
from contract.records import UnitRecord
from store.api import create_app
from store.cli import main as store_cli
from store.config import load_store_config
from store.db import connect, create_schema
from store.ingest import Incoming
from store.record.audit import verify
from store.service import StoreService
from tests.store_fixtures import PILOT_PROTOCOL, pilot_unit_records

TOKENS = {
    "alice": "alice-token-1",
    "bob": "bob-token-2",
    "carol": "carol-token-3",
    "mallory": "mallory-token-4",
}
PROTOCOL = {
    **PILOT_PROTOCOL,
    "signoff": ["Quality", "Production", "Engineering"],
    "max_open_deviations": {"critical": 0, "major": 0},
    "allocation": {"field_test": {"min_units": 2, "min_users": 2}, "golden": {"min_units": 1}},
}


#: The pilot records moved ten years on: the protocol is written and approved before them.
LATER = 10 * 365 * 86_400.0


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def store_yaml(tmp_path: Path, db_url: str, read_token: bool = False) -> Path:
    (tmp_path / "alice.token").write_text(TOKENS["alice"] + "\n")
    people = [
        {"name": "Alice Q", "functions": ["Quality"], "token_file": str(tmp_path / "alice.token")},
        {"name": "Bob P", "functions": ["Production"], "token_env": "REC_TEST_BOB"},
        {
            "name": "Carol E",
            "functions": ["Engineering"],
            "token_sha256": hashlib.sha256(TOKENS["carol"].encode()).hexdigest(),
        },
        {
            "name": "Mallory",
            "functions": ["Operator"],
            "token_sha256": hashlib.sha256(TOKENS["mallory"].encode()).hexdigest(),
        },
    ]
    config: dict[str, Any] = {"database": {"url": db_url}, "people": people}
    if read_token:
        config["http"] = {"read_token": {"token_sha256": hashlib.sha256(b"reader").hexdigest()}}
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def units_message(records: list[UnitRecord], first_seq: int) -> Incoming:
    bodies = [(seq, encode_unit(r)) for seq, r in enumerate(records, first_seq)]
    return Incoming("collector/s/l/pc1/units", build_message("pc1", with_seq(bodies), b"units"))


def unit(serial: str, verdict: str, end: float, operation: str = "functional-test") -> UnitRecord:
    return UnitRecord(
        serial=serial,
        station="ft-1",
        operation=operation,
        attempt=1,
        start_ts=end - 30,
        end_ts=end,
        ended_by="verdict",
        verdict=verdict,
        failure_code=None,
        readings=0,
        characteristics={},
    )


@pytest.fixture
def app(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[TestClient, StoreService]:
    monkeypatch.setenv("REC_TEST_BOB", TOKENS["bob"])
    return make_app(db_url, tmp_path)


def make_app(
    db_url: str, tmp_path: Path, read_token: bool = False
) -> tuple[TestClient, StoreService]:
    """A store with the pilot records (``read_token``: reads need the token ``reader``)."""
    config = load_store_config(store_yaml(tmp_path, db_url, read_token))
    service = StoreService(config, connect(db_url))
    create_schema(service.engine, timescaledb=False)
    records = [
        dataclasses.replace(r, start_ts=r.start_ts + LATER, end_ts=r.end_ts + LATER)
        for r in pilot_unit_records()
    ]
    records.append(unit("BAD-1", "fail", records[-1].end_ts + 60))
    result = service.writer.write([units_message(records, 1)])
    assert result.quarantined == []
    return TestClient(create_app(service)), service


def post_run(client: TestClient, protocol: dict[str, Any], who: str = "alice") -> httpx.Response:
    return client.post("/runs", content=yaml.safe_dump(protocol), headers=auth(who))


def test_the_whole_flow(app: tuple[TestClient, StoreService], db_url: str) -> None:
    client, service = app
    created = post_run(client, PROTOCOL)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    assert created.json()["version"] == 1
    again = post_run(client, PROTOCOL, "bob")  # the same text: the existing version
    assert again.status_code == 200
    assert again.json() == created.json()
    changed = post_run(client, {**PROTOCOL, "run": {**PROTOCOL["run"], "product": "X rev B"}})
    assert changed.status_code == 201
    assert (changed.json()["id"], changed.json()["version"]) == (run_id, 2)
    listed = client.get("/runs").json()
    assert [(r["id"], r["name"], r["latest_version"]) for r in listed] == [
        (run_id, "Pilot run T", 2)
    ]
    shown = client.get(f"/runs/{run_id}").json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert "product: X rev B" in shown["versions"][1]["protocol"]  # old versions stay
    assert shown["state"] == "awaiting"
    assert shown["awaiting"] == ["Quality", "Production", "Engineering"]

    # Approvals: each function for itself only, once per decision.
    for who, function in (("alice", "Quality"), ("bob", "Production"), ("carol", "Engineering")):
        body = {"function": function, "decision": "approve", "reason": "reviewed"}
        answer = client.post(f"/runs/{run_id}/approvals", json=body, headers=auth(who))
        assert answer.status_code == 201, answer.text
        assert (answer.json()["person"], answer.json()["version"]) == (answer.json()["person"], 2)
    wrong = client.post(
        f"/runs/{run_id}/approvals",
        headers=auth("bob"),
        json={"function": "Quality", "decision": "approve"},
    )
    assert wrong.status_code == 403
    assert wrong.json()["detail"] == "Bob P does not act for Quality (their functions: Production)"
    twice = client.post(
        f"/runs/{run_id}/approvals",
        headers=auth("bob"),
        json={"function": "Production", "decision": "approve"},
    )
    assert twice.status_code == 409
    outsider = client.post(
        f"/runs/{run_id}/approvals",
        headers=auth("mallory"),
        json={"function": "Operator", "decision": "approve"},
    )
    assert outsider.status_code == 422
    assert outsider.json()["detail"] == (
        "body.function: Operator does not sign this protocol (signoff: Quality, Production, "
        "Engineering)"
    )

    # A deviation on PILOT-03, open: the report's criterion fails; closed: it passes.
    deviation = client.post(
        f"/runs/{run_id}/deviations",
        headers=auth("carol"),
        json={
            "description": "fixture clamp replaced\nmid-shift",
            "severity": "major",
            "operation": "functional-test",
            "station": "ft-1",
            "serials": ["PILOT-03"],
            "action": "re-tested the unit",
        },
    )
    assert deviation.status_code == 201, deviation.text
    did = deviation.json()["id"]
    report = client.get(f"/runs/{run_id}/report?format=json").json()
    assert report["deviations"]["open"] == [did]
    assert report["deviations"]["by_severity"] == {"minor": 0, "major": 1, "critical": 0}
    assert report["deviations"]["by_operation"] == {"functional-test": 1}
    criteria = {c["name"]: c["result"] for c in report["run_criteria"]}
    assert criteria["open_deviations major"] == "fail"
    assert report["decision"] == "no-go"
    genealogy = client.get("/units/PILOT-03").json()
    assert [d["id"] for d in genealogy["deviations"]] == [did]
    assert client.get("/units/PILOT-04").json()["deviations"] == []
    closed = client.post(
        f"/runs/{run_id}/deviations/{did}/close",
        headers=auth("carol"),
        json={"cause": "worn clamp", "action": "clamp replaced"},
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["open"] is False
    again_closed = client.post(
        f"/runs/{run_id}/deviations/{did}/close",
        headers=auth("carol"),
        json={"cause": "x", "action": "y"},
    )
    assert again_closed.status_code == 409

    # Dispositions: history kept, the latest current; a failed or scrapped unit stays home.
    def dispose(serial: str, disposition: str, **detail: Any) -> httpx.Response:
        return client.post(
            f"/units/{serial}/dispositions",
            headers=auth("alice"),
            json={"disposition": disposition, "detail": detail, "reason": "plan"},
        )

    assert dispose("PILOT-01", "field_test", site="Lyon", user="u1").status_code == 201
    assert dispose("PILOT-02", "field_test", site="Lyon", user="u2").status_code == 201
    assert dispose("PILOT-05", "retained").status_code == 201
    assert dispose("PILOT-05", "golden", location="cabinet 3").status_code == 201
    refused = dispose("BAD-1", "field_test", site="Lyon", user="u3")
    assert refused.status_code == 409
    assert refused.json()["detail"].startswith(
        "unit 'BAD-1' cannot go to field_test: its last verdict is fail (functional-test, "
    )
    assert dispose("PILOT-06", "scrap").status_code == 201
    scrapped = dispose("PILOT-06", "shipped")
    assert scrapped.status_code == 409
    assert "it was scrapped at" in scrapped.json()["detail"]
    missing = dispose("PILOT-07", "field_test", site="Lyon")
    assert missing.status_code == 422
    assert missing.json()["detail"] == "body.detail.user: required for field_test"
    remark = client.post(
        "/units/PILOT-05/remarks",
        headers=auth("bob"),
        json={"author": "operator 7", "text": "scratch on the lid"},
    )
    assert remark.status_code == 201
    found = client.get("/units/PILOT-05").json()
    assert [d["disposition"] for d in found["dispositions"]] == ["retained", "golden"]
    assert found["disposition"] == "golden"
    assert found["remarks"][0]["text"] == "scratch on the lid"

    report = client.get(f"/runs/{run_id}/report?format=json").json()
    for key in ("approvals", "deviations", "allocation", "signoffs", "state", "audit"):
        assert key in report
    assert report["approvals"]["version"] == 2
    assert report["approvals"]["approved"] is True
    assert report["approvals"]["before_first_unit"] is True  # the units come years later
    assert [a["person"] for a in report["approvals"]["by_function"]] == [
        "Alice Q",
        "Bob P",
        "Carol E",
    ]
    assert report["deviations"]["open"] == []
    assert report["allocation"]["units"]["field_test"] == 2
    assert report["allocation"]["units"]["golden"] == 1
    assert report["allocation"]["units"]["scrap"] == 1
    assert report["allocation"]["field_test_users"] == ["u1", "u2"]
    criteria = {c["name"]: c["result"] for c in report["run_criteria"]}
    assert criteria == {
        "open_deviations critical": "pass",
        "open_deviations major": "pass",
        "allocation field_test units": "pass",
        "allocation field_test users": "pass",
        "allocation golden units": "pass",
    }
    assert report["state"] == "awaiting"
    assert report["signoffs"] == []
    entries = report["audit"]["entries"]
    assert report["audit"]["verified"] is True
    assert entries == 3 + 3 + 2 + 5 + 1  # runs+versions, approvals, deviation, dispositions...

    # Sign-off: a no-go needs a reason; a go on a report that is not go is an override.
    decision = report["decision"]
    signoff = f"/runs/{run_id}/signoffs"
    no_reason = client.post(
        signoff, headers=auth("bob"), json={"function": "Production", "decision": "no-go"}
    )
    assert no_reason.status_code == 422
    assert no_reason.json()["detail"] == "body.reason: a no-go needs a reason"
    if decision != "go":
        bare = client.post(
            signoff, headers=auth("alice"), json={"function": "Quality", "decision": "go"}
        )
        assert bare.status_code == 422
        assert f"override: the report's decision is {decision}" in bare.json()["detail"]
    quality = client.post(
        signoff,
        headers=auth("alice"),
        json={
            "function": "Quality",
            "decision": "go",
            "reason": "accepted: the open criteria are followed up",
        },
    )
    assert quality.status_code == 201, quality.text
    signed = quality.json()
    assert signed["override"] is (decision != "go")
    assert signed["meaning"].startswith("Alice Q, for Quality, signs GO on pilot run 'Pilot run T'")
    kept = client.get(f"/runs/{run_id}/signoffs/{signed['id']}/report")
    assert hashlib.sha256(kept.content).hexdigest() == signed["report_sha256"]
    state = client.get(f"/runs/{run_id}").json()
    assert (state["state"], state["awaiting"]) == ("awaiting", ["Production", "Engineering"])
    dup = client.post(
        signoff,
        headers=auth("alice"),
        json={"function": "Quality", "decision": "go", "reason": "again"},
    )
    assert dup.status_code == 409
    production = client.post(
        signoff,
        headers=auth("bob"),
        json={
            "function": "Production",
            "decision": "no-go",
            "reason": "takt not met on night shift",
        },
    )
    assert production.status_code == 201
    report = client.get(f"/runs/{run_id}/report?format=json").json()
    assert report["state"] == "no-go"
    assert [s["function"] for s in report["signoffs"]] == ["Quality", "Production"]
    assert report["signoffs"][0]["override"] is (decision != "go")
    assert not any(s["stale"] for s in report["signoffs"])

    # Data after the signatures: they were given on an earlier state.
    late = unit("PILOT-13", "pass", 1_795_255_200.0 + LATER + 3600)
    service.writer.write([units_message([late], 100)])
    report = client.get(f"/runs/{run_id}/report?format=json").json()
    assert all(s["stale"] for s in report["signoffs"])
    assert "earlier state of the data" in report["state_words"]
    assert report["audit"] == {**report["audit"], "verified": True, "entries": entries + 2}
    assert verify(service.engine).ok


def test_a_late_protocol_needs_a_reason_and_every_go_makes_go(
    app: tuple[TestClient, StoreService],
) -> None:
    client, service = app
    # A first unit record long before the protocol was written.
    service.writer.write([units_message([unit("PILOT-99", "pass", 1_600_000_000.0)], 200)])
    protocol = {**PROTOCOL, "run": {"name": "Late run", "serial_pattern": "PILOT-\\d{2}"}}
    run_id = post_run(client, protocol).json()["id"]
    for who, function in (("alice", "Quality"), ("bob", "Production"), ("carol", "Engineering")):
        client.post(
            f"/runs/{run_id}/approvals",
            headers=auth(who),
            json={"function": function, "decision": "approve"},
        )
    report = client.get(f"/runs/{run_id}/report?format=json").json()
    assert report["approvals"]["before_first_unit"] is False
    note = report["approvals"]["notes"][0]
    assert note.startswith("protocol version 1 was created at ")
    assert note.endswith("after the run's first unit record (2020-09-13T12:26:40.000000Z)")
    bare = client.post(
        f"/runs/{run_id}/signoffs",
        headers=auth("carol"),
        json={"function": "Engineering", "decision": "go"},
    )
    assert bare.status_code == 422
    assert "after the run's first unit record" in bare.json()["detail"]
    # A reason that does not name the late version is not enough (docs/pilot-record.md).
    vague = client.post(
        f"/runs/{run_id}/signoffs",
        headers=auth("carol"),
        json={"function": "Engineering", "decision": "go", "reason": "fine by me"},
    )
    assert vague.status_code == 422
    assert vague.json()["detail"].startswith(
        "body.reason: protocol version 1 was created or approved after the run's first unit "
        "record: the reason must name it ('version 1'): protocol version 1 was created at "
    )
    wrong = client.post(
        f"/runs/{run_id}/signoffs",
        headers=auth("carol"),
        json={"function": "Engineering", "decision": "go", "reason": "version 12 accepted"},
    )
    assert wrong.status_code == 422
    for who, function in (("alice", "Quality"), ("bob", "Production"), ("carol", "Engineering")):
        answer = client.post(
            f"/runs/{run_id}/signoffs",
            headers=auth(who),
            json={
                "function": function,
                "decision": "go",
                "reason": "late protocol Version 1 accepted: same as draft v0",
            },
        )
        assert answer.status_code == 201, answer.text
        assert any(e.startswith("protocol: ") for e in answer.json()["exceptions"])
    shown = client.get(f"/runs/{run_id}").json()
    assert (shown["state"], shown["awaiting"]) == ("go", [])


def test_tokens_rights_and_bad_input(app: tuple[TestClient, StoreService]) -> None:
    client, _ = app
    run_id = post_run(client, PROTOCOL).json()["id"]
    body = {"function": "Quality", "decision": "approve"}
    url = f"/runs/{run_id}/approvals"
    assert client.post(url, json=body).status_code == 401
    unknown = client.post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == "missing or unknown bearer token"
    assert "nope" not in unknown.text
    # The token is checked before the body is read: a huge one without a token is a 401.
    huge = b"x" * (70 * 1024)
    assert client.post(url, content=huge).status_code == 401
    too_big = client.post(url, content=huge, headers=auth("alice"))
    assert too_big.status_code == 413
    assert too_big.json()["detail"] == "the body is limited to 65536 bytes"

    def chunks() -> Any:
        for _ in range(70):
            yield b"y" * 1024

    streamed = client.post(url, content=chunks(), headers=auth("alice"))
    assert streamed.status_code == 413

    def approve(payload: Any) -> httpx.Response:
        return client.post(url, json=payload, headers=auth("alice"))

    control = approve({**body, "reason": "ok\u202eko"})
    assert control.status_code == 422
    assert control.json()["detail"] == (
        "body.reason: contains the control or format character U+202E"
    )
    assert approve({**body, "colour": "red"}).json()["detail"] == "body.colour: unknown field"
    assert approve({"decision": "maybe"}).json()["detail"] == (
        "body.function: required field is missing; body.decision: Input should be 'approve' "
        "or 'reject'"
    )
    assert client.post(url, content=b"{", headers=auth("alice")).status_code == 422
    no_run = client.post("/runs/999/approvals", json=body, headers=auth("alice"))
    assert (no_run.status_code, no_run.json()["detail"]) == (404, "no run 999 in the store")
    assert client.get("/runs/999").json()["detail"] == "no run 999 in the store"
    no_unit = client.post(
        "/units/NOPE-1/remarks", headers=auth("alice"), json={"author": "a", "text": "b"}
    )
    assert (no_unit.status_code, no_unit.json()["detail"]) == (
        404,
        "no unit 'NOPE-1' in the store",
    )
    deviation = client.post(
        f"/runs/{run_id}/deviations",
        headers=auth("alice"),
        json={"description": "d", "severity": "major", "action": "a"},
    )
    assert deviation.status_code == 422
    assert deviation.json()["detail"] == (
        "body: name the units: serials, or a time window {start, end}"
    )
    serial = client.post(
        f"/runs/{run_id}/deviations",
        headers=auth("alice"),
        json={"description": "d", "severity": "minor", "action": "a", "serials": ["A\x1b[2J"]},
    )
    assert serial.json()["detail"] == (
        "body.serials[0]: contains the control or format character U+001B"
    )
    bad = client.post(
        "/runs", content="run:\n  name: P\nsample_sizes:\n  min_units: 0\n", headers=auth("alice")
    )
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("protocol:4: sample_sizes.min_units:")
    # Nothing half-stored: only the first run's two entries.
    assert client.get(f"/runs/{run_id}/report?format=json").json()["audit"]["entries"] == 2


def test_reads_need_the_read_token_when_one_is_set(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REC_TEST_BOB", TOKENS["bob"])
    config = load_store_config(store_yaml(tmp_path, db_url, read_token=True).resolve())
    service = StoreService(config, connect(db_url))
    create_schema(service.engine, timescaledb=False)
    client = TestClient(create_app(service))
    assert client.get("/runs").status_code == 401
    assert client.get("/units?serial=x").status_code == 401
    assert client.get("/runs", headers={"Authorization": "Bearer reader"}).status_code == 200
    assert client.get("/runs", headers=auth("carol")).status_code == 200
    assert client.get("/health").status_code in (200, 503)  # open: probes carry no token


def test_audit_verify_catches_an_update_and_a_delete(
    app: tuple[TestClient, StoreService], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client, service = app
    run_id = post_run(client, PROTOCOL).json()["id"]
    for who, function in (("alice", "Quality"), ("bob", "Production"), ("carol", "Engineering")):
        client.post(
            f"/runs/{run_id}/approvals",
            headers=auth(who),
            json={"function": function, "decision": "approve"},
        )
    assert store_cli(["audit", "verify", "--db", db_url]) == 0
    assert "audit: OK, 5 entries" in capsys.readouterr().out
    with service.engine.begin() as conn:  # behind the store's back
        conn.execute(sa.text("UPDATE record_approvals SET decision = 'reject' WHERE audit_id = 4"))
    assert store_cli(["audit", "verify", "--db", db_url]) == 1
    assert capsys.readouterr().err.startswith(
        "audit: entry 4 does not match: entry 4: its record_approvals row differs in decision"
    )
    with service.engine.begin() as conn:
        conn.execute(sa.text("UPDATE record_approvals SET decision = 'approve' WHERE audit_id = 4"))
        conn.execute(sa.text("DELETE FROM audit WHERE id = 3"))
    assert store_cli(["audit", "verify", "--db", db_url]) == 1
    assert capsys.readouterr().err.startswith(
        "audit: entry 3 does not match: entry 3 is missing (deleted?)"
    )
    assert client.get(f"/runs/{run_id}/report").json()["audit"]["verified"] is False
    with service.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit SET actor = 'Eve' WHERE id = 2"))
    assert store_cli(["audit", "verify", "--db", db_url]) == 1
    assert "entry 2 does not match: entry 2: its content does not match its hash" in (
        capsys.readouterr().err
    )
    assert store_cli(["audit", "verify"]) == 2  # neither --db nor --config


def test_two_writers_at_once_do_not_fork_the_chain(app: tuple[TestClient, StoreService]) -> None:
    client, service = app
    errors: list[str] = []

    def write(who: str) -> None:
        for index in range(10):
            answer = client.post(
                "/units/PILOT-01/remarks",
                headers=auth(who),
                json={"author": who, "text": f"remark {index}"},
            )
            if answer.status_code != 201:
                errors.append(answer.text)

    threads = [threading.Thread(target=write, args=(who,)) for who in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    checked = verify(service.engine)
    assert (checked.ok, checked.entries) == (True, 20)


def test_people_config_problems_are_said_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REC_TEST_BOB", raising=False)
    path = store_yaml(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    config = yaml.safe_load(path.read_text())
    config["people"][3]["token_sha256"] = config["people"][2]["token_sha256"]
    config["people"].append({"name": "Nobody", "functions": ["Quality"],
                             "token_file": str(tmp_path / "missing")})  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_store_config(path)
    assert raised.value.problems == [
        f"{path}:1: people[1].token_env: environment variable REC_TEST_BOB is not set",
        f"{path}:1: people[3]: the same token as people[2]",
        f"{path}:1: people[4].token_file: cannot read: No such file or directory",
    ]
    config["people"][0]["token_env"] = "X"  # two sources
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_store_config(path)
    assert raised.value.problems[0].endswith(
        "people[0]: give exactly one of token_sha256, token_file, token_env"
    )


def test_pilot_open_opens_a_run_as_the_tokens_person(
    app: tuple[TestClient, StoreService],
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``collector store pilot open --protocol FILE``: what POST /runs does, by the person
    whose token it is given; the same text again is the same version."""
    client, _ = app
    config = str(tmp_path / "store.yaml")  # the app's, with its people
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(PROTOCOL))
    opened = ["pilot", "open", "--protocol", str(protocol), "--config", config, "--db", db_url]
    monkeypatch.delenv("COLLECTOR_STORE_TOKEN", raising=False)
    assert store_cli(opened) == 2  # no token: nobody
    assert "is no person's of the config's people" in capsys.readouterr().err
    monkeypatch.setenv("COLLECTOR_STORE_TOKEN", TOKENS["bob"])
    assert store_cli(opened) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["version"], first["created"]) == (1, True)
    shown = client.get(f"/runs/{first['id']}").json()
    assert shown["versions"][0]["created_by"] == "Bob P"
    token_file = tmp_path / "alice.token"  # written by store_yaml
    assert store_cli([*opened, "--token-file", str(token_file)]) == 0
    assert json.loads(capsys.readouterr().out) == {**first, "created": False}
    protocol.write_text("run: {name: x}\noperations: 7\n")
    assert store_cli(opened) == 2
    refused = capsys.readouterr().err
    assert refused.startswith(f"pilot open: {protocol}: ")
    assert "operations" in refused
    assert TOKENS["bob"] not in refused


def test_the_runs_commands_list_show_and_report(
    app: tuple[TestClient, StoreService], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client, _ = app
    assert store_cli(["runs", "list", "--db", db_url]) == 0
    assert json.loads(capsys.readouterr().out) == []
    run_id = post_run(client, PROTOCOL).json()["id"]
    post_run(client, {**PROTOCOL, "run": {**PROTOCOL["run"], "product": "X rev B"}}, "bob")
    client.post(
        f"/runs/{run_id}/approvals",
        headers=auth("alice"),
        json={"function": "Quality", "decision": "approve", "version": 1},
    )
    assert store_cli(["runs", "list", "--db", db_url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["name"], r["created_by"], r["latest_version"]) for r in listed] == [
        (run_id, PROTOCOL["run"]["name"], "Alice Q", 2)
    ]
    assert store_cli(["runs", "show", str(run_id), "--db", db_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["created_by"]) for v in shown["versions"]] == [
        (1, "Alice Q"),
        (2, "Bob P"),
    ]
    assert shown["versions"][1]["scope"]["product"] == "X rev B"
    assert [(a["version"], a["function"], a["person"]) for a in shown["approvals"]] == [
        (1, "Quality", "Alice Q")
    ]
    assert store_cli(["runs", "report", str(run_id), "--version", "1", "--db", db_url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol_version"]["version"] == 1
    assert report["protocol_version"]["latest_version"] == 2
    assert report["approvals"]["approved"] is False
    assert report["approvals"]["missing"] == ["Production", "Engineering"]
    assert report["audit"]["entries"] == 4
    assert report["state"] == "awaiting"
    # The same report as over HTTP, but for its time.
    over_http = client.get(f"/runs/{run_id}/report?format=json&version=1").json()
    assert {k: v for k, v in report.items() if k != "generated_at"} == {
        k: v for k, v in over_http.items() if k != "generated_at"
    }
    html_args = ["runs", "report", str(run_id), "--format", "html", "--unit-base", "http://s"]
    assert store_cli([*html_args, "--db", db_url]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>")
    assert '<a class="unit" href="http://s/units/PILOT-01">PILOT-01</a>' in page
    assert '<p id="run-state"><b>⏳ AWAITING</b>: awaiting the signatures of ' in page
    assert store_cli(["runs", "report", "999", "--db", db_url]) == 1
    assert capsys.readouterr().err == "no run 999 in the store\n"
    assert store_cli(["runs", "show", "--db", db_url]) == 2
    assert capsys.readouterr().err == "runs show: give the run's id\n"
    assert store_cli(["runs", "list"]) == 2  # neither --db nor --config


def test_the_report_as_a_page_shows_the_record(app: tuple[TestClient, StoreService]) -> None:
    client, _ = app
    run_id = post_run(client, PROTOCOL).json()["id"]
    client.post(
        f"/runs/{run_id}/approvals",
        headers=auth("alice"),
        json={"function": "Quality", "decision": "approve"},
    )
    client.post(
        f"/runs/{run_id}/deviations",
        headers=auth("alice"),
        json={"description": "<script>alert(1)</script> jam", "severity": "major",
              "serials": ["PILOT-01"], "action": "set aside"},
    )  # fmt: skip
    client.post(
        f"/runs/{run_id}/signoffs",
        headers=auth("bob"),
        json={"function": "Production", "decision": "no-go", "reason": "open major deviation"},
    )
    page = client.get(f"/runs/{run_id}/report?format=html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'none'; ")
    html = page.text
    assert "<script" not in html  # the description is escaped, and the page has no script
    assert "&lt;script&gt;alert(1)&lt;/script&gt; jam" in html
    assert '<p id="run-state"><b>✗ NO-GO</b>: no-go signed by Bob P (Production).</p>' in html
    assert "<td>Bob P</td><td><b>NO-GO</b></td><td>open major deviation</td>" in html
    assert "not approved yet by Production, Engineering" in html
    assert "audit trail verified, 5 entries" in html
    assert client.get("/runs/999/report?format=html").json()["detail"] == "no run 999 in the store"
    other = client.get(f"/runs/{run_id}/report?format=xml")
    assert (other.status_code, other.json()["detail"]) == (
        422,
        "format 'xml': a run's report is json or html",
    )
