"""OPC-UA test parts shared by test modules: the simulated rack (plain and secure), its
certificates, and device configs for it (fixtures are imported where they are used)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.opcua.config import OpcUaDevice
from drivers.opcua.driver import make_certificate
from drivers.opcua.sim import SimulatedBurnInRack, rack_tags


def device(rack: SimulatedBurnInRack, **extra: Any) -> OpcUaDevice:
    return OpcUaDevice.model_validate(
        {
            "name": "rack-1",
            "protocol": "opcua",
            "endpoint": rack.endpoint,
            "timeout_ms": 2000,
            "keepalive_s": 0.5,
            "publishing_interval_ms": 50,
            "sampling_interval_ms": 10,
            "tags": rack_tags(range(1, rack.slots + 1)),
            **extra,
        }
    )


@pytest.fixture
async def rack() -> AsyncIterator[SimulatedBurnInRack]:
    server = SimulatedBurnInRack(slots=4)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    files = {
        name: folder / f"{name}.{ext}"
        for name, ext in (
            ("server_cert", "der"),
            ("server_key", "pem"),
            ("client_cert", "der"),
            ("client_key", "pem"),
            ("other_cert", "der"),
            ("other_key", "pem"),
        )
    }

    async def create() -> None:
        await make_certificate(files["server_cert"], files["server_key"], "urn:rack", server=True)
        await make_certificate(files["client_cert"], files["client_key"])
        await make_certificate(files["other_cert"], files["other_key"], "urn:other", server=True)

    asyncio.run(create())
    return files


@pytest.fixture
async def secure_rack(pki: dict[str, Path]) -> AsyncIterator[SimulatedBurnInRack]:
    server = SimulatedBurnInRack(
        slots=1,
        certificate=pki["server_cert"],
        key=pki["server_key"],
        users={"operator": "line-pw"},
    )
    await server.start()
    yield server
    await server.stop()


def secure_device(
    rack: SimulatedBurnInRack, pki: dict[str, Path], trusted: str, password: str
) -> OpcUaDevice:
    return device(
        rack,
        security={
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate_file": str(pki["client_cert"]),
            "private_key_file": str(pki["client_key"]),
            "server_certificate_file": str(pki[trusted]),
        },
        user={"username": "operator", "password_file": str(pki[password])},
    )
