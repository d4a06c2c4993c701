"""OPC-UA against a real asyncua server in-process (drivers/opcua/sim.py's simulated burn-in rack):
batched polling, subscriptions with a deadband, status codes, recovery after a server restart
that changes the namespace index, secure sessions, and the errors a technician sees."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collector.acquisition.poller import DeviceStatus, Poller
from collector.config import parse_config
from common.backoff import Backoff
from contract.codes import ErrorCode
from contract.records import Quality, Reading
from drivers.base import NotConnectedError
from drivers.opcua.config import OpcUaSecurity
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.sim import RACK_NAMESPACE, SimulatedBurnInRack, rack_tags
from drivers.opcua.tools import browse
from tests.helpers import async_wait_until
from tests.opcua_fixtures import device, secure_device

# StatusCode values the simulated server can set (OPC-UA Part 6).
BAD_SENSOR_FAILURE = 0x808B0000
UNCERTAIN_LAST_USABLE = 0x40900000


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


async def test_one_poll_reads_every_node_in_one_read_call(
    rack: SimulatedBurnInRack, opened: Any
) -> None:
    await rack.set("Slot03.Temp", 85.25)
    await rack.set("Slot03.Serial", "PILOT-0003")
    driver = await opened(OpcUaDriver(device(rack)))
    assert "16 polled tag(s) in 1 Read call(s)" in driver.describe()
    readings = await driver.read()
    assert len(readings) == 16
    assert len({r.ts for r in readings}) == 1  # one read, one time
    values = by_tag(readings)
    assert values["slot03_temp"] == Reading(readings[0].ts, "slot03_temp", 85.25, "degC")
    assert values["slot03_serial"].value == "PILOT-0003"
    assert values["slot01_voltage"].value == 12.0
    # A smaller per-call limit: more calls, same readings.
    small = await opened(OpcUaDriver(device(rack, max_nodes_per_read=5)))
    assert "in 4 Read call(s)" in small.describe()
    assert {r.tag: r.value for r in await small.read()} == {r.tag: r.value for r in readings}


async def test_status_codes_become_quality(rack: SimulatedBurnInRack, opened: Any) -> None:
    driver = await opened(OpcUaDriver(device(rack)))
    await rack.set("Slot01.Temp", 99.0, status=BAD_SENSOR_FAILURE)
    await rack.set("Slot02.Temp", 41.5, status=UNCERTAIN_LAST_USABLE)
    values = by_tag(await driver.read())
    assert values["slot01_temp"].quality is Quality.BAD
    assert values["slot01_temp"].error is ErrorCode.BAD_STATUS
    assert values["slot01_temp"].value is None
    assert values["slot02_temp"].quality is Quality.UNCERTAIN
    assert values["slot02_temp"].value == 41.5


async def test_subscription_reports_changes_beyond_the_deadband_with_source_time(
    rack: SimulatedBurnInRack, opened: Any
) -> None:
    temp = {
        "name": "temp",
        "namespace_uri": RACK_NAMESPACE,
        "id": "s=Rack1.Slot01.Temp",
        "unit": "degC",
    }
    driver = await opened(
        OpcUaDriver(
            device(
                rack,
                collect="subscribe",
                deadband={"type": "absolute", "value": 1.0},
                tags=[temp],
            )
        )
    )
    received: list[Reading] = []

    async def changes_until(value: float) -> None:
        async def seen() -> bool:
            received.extend(await driver.read())
            return any(r.value == value for r in received)

        await async_wait_until(seen, 10, f"the change to {value}")

    await changes_until(25.0)  # the initial value
    before = time.time()
    # OPC-UA Part 4 (7.22.2, DataChangeFilter): a change is reported when it differs from the
    # last *reported* value by more than the deadband. Each step below is on the same side of
    # the deadband whether a server compares with the last reported or the last sampled value
    # (asyncua's server does the latter), so the test pins the semantics, not a server.
    for value in (25.5, 27.0, 26.6, 24.0):  # 0.5: no; 2.0: yes; 0.4: no; 3.0: yes
        await rack.set("Slot01.Temp", value)
        await asyncio.sleep(0.1)  # let the server sample each one (sampling is 10 ms)
    await changes_until(24.0)
    assert [r.value for r in received] == [25.0, 27.0, 24.0]
    assert all(r.tag == "temp" and r.unit == "degC" for r in received)
    assert received[-1].ts >= before - 1  # the server's source timestamp, not ours


async def test_server_restart_with_a_new_namespace_index_recovers_without_restart(
    opened: Any,
) -> None:
    first = SimulatedBurnInRack(slots=1)
    await first.start()
    tags = rack_tags([1])
    tags.append({**tags[0], "name": "temp_sub", "collect": "subscribe"})
    config = device(first, reconnect_min_ms=100, reconnect_max_ms=1000, tags=tags)
    status = DeviceStatus("rack-1", "opcua", None)
    readings: list[Reading] = []
    poller = Poller(
        OpcUaDriver(config),
        status,
        0.1,
        lambda _device, polled: readings.extend(polled),
        Backoff(0.1, 1.0),
    )
    task = asyncio.create_task(poller.run())
    second: SimulatedBurnInRack | None = None
    try:
        await async_wait_until(lambda: status.connected and readings, 10, "first readings")
        assert first.namespace_index == 2
        await first.stop()
        await async_wait_until(lambda: not status.connected, 10, "the loss is seen")
        assert status.last_error is not None
        # The rack comes back on the same port, its namespace now at another index; a value
        # only the new server has shows that the right node is read.
        second = SimulatedBurnInRack(slots=1, port=first.port, filler_namespaces=3)
        await second.start()
        await second.set("Slot01.Temp", 66.5)
        assert second.namespace_index == 5
        lost_at = time.monotonic()
        await async_wait_until(
            lambda: any(r.tag == "slot01_temp" and r.value == 66.5 for r in readings),
            10,
            "polled readings from the restarted server",
        )
        await async_wait_until(
            lambda: any(r.tag == "temp_sub" and r.value == 66.5 for r in readings),
            10,
            "subscription readings from the restarted server",
        )
        assert time.monotonic() - lost_at < 10
        assert status.connected
        assert poller._driver.details()["namespaces"][RACK_NAMESPACE] == 5  # type: ignore[attr-defined]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await poller._driver.close()
        if second is not None:
            await second.stop()


async def test_sign_and_encrypt_with_a_trusted_server_and_a_password(
    secure_rack: SimulatedBurnInRack, pki: dict[str, Path], opened: Any, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("line-pw\n")
    pki = {**pki, "pw": tmp_path / "pw"}
    driver = await opened(OpcUaDriver(secure_device(secure_rack, pki, "server_cert", "pw")))
    values = by_tag(await driver.read())
    assert values["slot01_temp"].value == 25.0
    assert driver.details()["security"] == "Basic256Sha256/SignAndEncrypt"


async def test_an_untrusted_server_or_a_wrong_password_is_a_clear_error_and_retried(
    secure_rack: SimulatedBurnInRack,
    pki: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "pw").write_text("line-pw\n")
    (tmp_path / "bad").write_text("guess\n")
    pki = {**pki, "pw": tmp_path / "pw", "bad": tmp_path / "bad"}
    # The server shows a certificate other than the trusted one.
    untrusted = OpcUaDriver(secure_device(secure_rack, pki, "other_cert", "pw"))
    with pytest.raises(NotConnectedError) as info:
        await untrusted.connect()
    assert info.value.code is ErrorCode.SECURITY
    assert "server certificate not trusted (sha256 " in str(info.value)
    await untrusted.close()
    # A trusted server, a wrong password.
    wrong = OpcUaDriver(secure_device(secure_rack, pki, "server_cert", "bad"))
    with pytest.raises(NotConnectedError) as info:
        await wrong.connect()
    assert info.value.code is ErrorCode.SECURITY
    assert "user rejected" in str(info.value)
    assert "guess" not in str(info.value)
    await wrong.close()
    # Under the poller: counted, shown, logged once, and tried again with backoff.
    status = DeviceStatus("rack-1", "opcua", None)
    poller = Poller(wrong, status, 0.1, lambda *_: None, Backoff(0.05, 0.2))
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(lambda: status.errors.get("security", 0) >= 3, 20, "retries")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await wrong.close()
    assert not status.connected
    assert "user rejected" in (status.last_error or "")
    assert status.snapshot()["errors"]["security"] >= 3
    logged = [r.getMessage() for r in caplog.records if "user rejected" in r.getMessage()]
    assert len(logged) == 1, logged  # once per episode, not at every retry


async def test_a_subscription_ended_by_the_server_is_lost_and_made_again(
    rack: SimulatedBurnInRack,
) -> None:
    temp = {"name": "temp", "namespace_uri": RACK_NAMESPACE, "id": "s=Rack1.Slot01.Temp"}
    status = DeviceStatus("rack-1", "opcua", None)
    readings: list[Reading] = []
    poller = Poller(
        OpcUaDriver(device(rack, collect="subscribe", tags=[temp])),
        status,
        0.05,
        lambda _device, polled: readings.extend(polled),
        Backoff(0.05, 0.2),
    )
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(lambda: any(r.value == 25.0 for r in readings), 10, "first value")
        # The session stays up, only the subscription ends: nothing but the server's status
        # change says that no data will come any more.
        assert await rack.end_subscriptions() == 1
        await async_wait_until(lambda: status.connects >= 2, 10, "a new subscription")
        assert status.errors == {"connection": 1}
        assert "subscription ended by the server: BadTimeout" in (status.last_error or "")
        await rack.set("Slot01.Temp", 31.5)
        await async_wait_until(
            lambda: any(r.value == 31.5 for r in readings), 10, "a change on the new subscription"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_browse_lists_the_rack_with_stable_node_ids(rack: SimulatedBurnInRack) -> None:
    nodes = await browse(rack.endpoint, OpcUaSecurity())
    temp = next(n for n in nodes if n.path == "/Rack1/Slot02/Temp")
    assert temp.node_id == f"ns={rack.namespace_index};s=Rack1.Slot02.Temp"
    assert (temp.namespace_uri, temp.id) == (RACK_NAMESPACE, "s=Rack1.Slot02.Temp")
    assert (temp.node_class, temp.data_type, temp.value) == ("Variable", "Double", "25.0")
    assert temp.depth == 2
    assert not any(n.path.startswith("/Server") for n in nodes)
    assert "Temp  [Variable] ns=2;s=Rack1.Slot02.Temp  Double = 25.0" in temp.line()


async def test_browse_command_prints_the_tree(rack: SimulatedBurnInRack) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        "browse",
        rack.endpoint,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "Slot04" in text
    assert f"ns={rack.namespace_index};s=Rack1.Slot04.Serial  String" in text
    assert RACK_NAMESPACE in text


def test_browse_command_without_a_server_says_so() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "browse", "opc.tcp://127.0.0.1:1/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "browse: opc.tcp://127.0.0.1:1/: cannot connect" in result.stderr


CONFIG = """\
collector: {id: pc1, site: s, line: l}
buffer: {path: /tmp/b.db}
devices:
  - name: rack-1
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    tags:
      - {name: t, node: "ns=2;s=Rack1.Slot01.Temp"}
"""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '{name: t, node: "ns=2;s=Rack1.Slot01.Temp"}',
            "{name: t, node: Rack1.Slot01.Temp}",
            "c.yaml:8: devices[0].tags[0]: 'Rack1.Slot01.Temp' is not a NodeId",
        ),
        (
            '{name: t, node: "ns=2;s=Rack1.Slot01.Temp"}',
            '{name: t, namespace_uri: urn:x, id: "ns=2;s=T"}',
            "c.yaml:8: devices[0].tags[0]: with namespace_uri, id has no 'ns=' part",
        ),
        (
            "    tags:",
            "    security: {policy: Basic256Sha256, mode: SignAndEncrypt}\n    tags:",
            "c.yaml:7: devices[0].security: policy Basic256Sha256 needs certificate_file and "
            "private_key_file",
        ),
        (
            "    tags:",
            "    security: {policy: Basic256Sha256, mode: SignAndEncrypt, certificate_file: c, "
            "private_key_file: k}\n    tags:",
            "c.yaml:7: devices[0].security: give server_certificate_file or "
            "trusted_certificates_dir",
        ),
        (
            "    tags:",
            "    security: {policy: None, mode: Sign}\n    tags:",
            "c.yaml:7: devices[0].security: policy None goes with mode None",
        ),
        (
            "    tags:",
            "    endpoint2: x\n    tags:",
            "c.yaml:7: devices[0].endpoint2: unknown key",
        ),
    ],
)
def test_opcua_config_errors(old: str, new: str, expected: str) -> None:
    from common.errors import ConfigError

    assert old in CONFIG
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.replace(old, new, 1), "c.yaml")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
