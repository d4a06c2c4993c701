"""A simulated OPC-UA server: a burn-in rack, a real asyncua server, for the demo
(collector.demo) and the tests.

A simulator, not a driver: it imports asyncua's server side itself, and the driver never
imports it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

RACK_NAMESPACE = "urn:shopfloor-collector:demo:burn-in-rack"


class _PasswordUsers(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            return None
        if self.users.get(username) == password:
            return User(role=UserRole.User)
        return None


class SimulatedBurnInRack:
    """A real asyncua server: a burn-in rack with ``slots`` slots, each with Temp, Voltage,
    Current and Serial, under namespace :data:`RACK_NAMESPACE` (for the demo and the tests).

    ``filler_namespaces`` registers other namespaces first, so that the rack's namespace index
    can be made to change between two starts on the same port, as it can after a real server
    restart. With ``certificate`` and ``key`` it offers Basic256Sha256 SignAndEncrypt only;
    with ``users`` it takes only those user names and passwords. ``max_sessions`` makes it
    refuse sessions beyond that many at once (node-opcua's default is 10), as a small rack
    controller does; ``sessions_created`` counts the sessions clients opened."""

    def __init__(
        self,
        slots: int = 4,
        *,
        port: int = 0,
        filler_namespaces: int = 0,
        certificate: Path | None = None,
        key: Path | None = None,
        users: dict[str, str] | None = None,
        max_sessions: int | None = None,
    ) -> None:
        self.slots = slots
        self.max_sessions = max_sessions
        self.sessions_created = 0
        self.port = port
        self.filler_namespaces = filler_namespaces
        self.certificate, self.key, self.users = certificate, key, users
        self.server: Server | None = None
        self.namespace_index = 0
        self._nodes: dict[str, Node] = {}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/rack"

    async def start(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = int(s.getsockname()[1])
        server = Server(user_manager=_PasswordUsers(self.users) if self.users else None)
        await server.init()
        self._count_sessions(server)
        server.set_endpoint(self.endpoint)
        server.set_server_name("Simulated burn-in rack")
        if self.certificate is not None and self.key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        for i in range(self.filler_namespaces):
            await server.register_namespace(f"urn:shopfloor-collector:demo:filler:{i}")
        ns = self.namespace_index = await server.register_namespace(RACK_NAMESPACE)
        rack = await server.nodes.objects.add_object(
            _sid(ns, "Rack1"), ua.QualifiedName("Rack1", ns)
        )
        for slot in range(1, self.slots + 1):
            name = f"Slot{slot:02d}"
            obj = await rack.add_object(_sid(ns, f"Rack1.{name}"), ua.QualifiedName(name, ns))
            for variable, initial, variant in (
                ("Temp", 25.0, ua.VariantType.Double),
                ("Voltage", 12.0, ua.VariantType.Double),
                ("Current", 0.5, ua.VariantType.Double),
                ("Serial", "", ua.VariantType.String),
            ):
                node = await obj.add_variable(
                    _sid(ns, f"Rack1.{name}.{variable}"),
                    ua.QualifiedName(variable, ns),
                    ua.Variant(initial, variant),
                )
                self._nodes[f"{name}.{variable}"] = node
        state = await rack.add_variable(
            _sid(ns, "Rack1.DoorOpen"), ua.QualifiedName("DoorOpen", ns), False
        )
        self._nodes["DoorOpen"] = state
        await server.start()
        self.server = server

    def _count_sessions(self, server: Server) -> None:
        iserver = server.iserver
        create = iserver.create_session

        def create_session(name: str, *args: Any, **kwargs: Any) -> Any:
            open_now = len(getattr(iserver, "_external_sessions", {}))
            if self.max_sessions is not None and open_now >= self.max_sessions:
                raise ua.UaStatusCodeError(ua.StatusCodes.BadTooManySessions)  # type: ignore[no-untyped-call]
            self.sessions_created += 1
            return create(name, *args, **kwargs)

        iserver.create_session = create_session  # type: ignore[method-assign]

    async def set(self, name: str, value: Any, status: int | None = None) -> None:
        """Set e.g. ``Slot03.Temp``; ``status`` (a StatusCode value) marks it bad/uncertain."""
        node = self._nodes[name]
        variant = await node.read_data_type_as_variant_type()
        now: Any = datetime.now(UTC)  # ua.DateTime is datetime, typed as a class of its own
        data = ua.DataValue(
            ua.Variant(value, variant),
            StatusCode=ua.StatusCode(ua.UInt32(status or 0)),
            SourceTimestamp=now,
            ServerTimestamp=now,
        )
        await node.write_value(data)

    async def end_subscriptions(self, status: int = ua.StatusCodes.BadTimeout) -> int:
        """End every client's subscription as a server does when one expires or it runs out of
        resources: a StatusChangeNotification with ``status``, then no more data changes.
        Returns how many subscriptions were ended."""
        assert self.server is not None
        subscriptions = list(self.server.iserver.subscription_service.subscriptions.values())
        for subscription in subscriptions:
            await subscription.enqueue_statuschange(ua.StatusCode(ua.UInt32(status)))
            subscription.monitored_item_srv.delete_all_monitored_items()
            # asyncua's server sends a status change only with the next keep-alive (which may
            # be many seconds away); a real server sends it at once. Make the keep-alive due.
            subscription._keep_alive_count = subscription.data.RevisedMaxKeepAliveCount
        return len(subscriptions)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


def _sid(ns: int, name: str) -> ua.NodeId:
    return ua.NodeId.from_string(f"ns={ns};s={name}")


def rack_slot_tags(first: int, last: int) -> list[dict[str, Any]]:
    """The same tags declared once for a slot range (expanded at config load): tag names
    ``slot07.temp``, each with its slot number."""
    slots = {"first": first, "last": last}
    return [
        {
            "name": f"slot{{slot:02d}}.{variable.lower()}",
            "slots": slots,
            "namespace_uri": RACK_NAMESPACE,
            "id": f"s=Rack1.Slot{{slot:02d}}.{variable}",
            **({"unit": unit} if unit else {}),
        }
        for variable, unit in (
            ("Temp", "degC"),
            ("Voltage", "V"),
            ("Current", "A"),
            ("Serial", None),
        )
    ]


def rack_tags(slots: Iterable[int]) -> list[dict[str, Any]]:
    """Config tags for the simulated rack's slots, addressed by namespace URI."""
    tags = []
    for slot in slots:
        name = f"Slot{slot:02d}"
        for variable, unit in (
            ("Temp", "degC"),
            ("Voltage", "V"),
            ("Current", "A"),
            ("Serial", None),
        ):
            tags.append(
                {
                    "name": f"slot{slot:02d}_{variable.lower()}",
                    "namespace_uri": RACK_NAMESPACE,
                    "id": f"s=Rack1.{name}.{variable}",
                    **({"unit": unit} if unit else {}),
                }
            )
    return tags
