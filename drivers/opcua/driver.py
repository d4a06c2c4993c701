"""OPC-UA driver (asyncua): batched polling, subscriptions, secure sessions, recovery.

The only module that makes asyncua clients (the simulator, drivers.opcua.sim, makes its
server). Beside it, each one idea, speak asyncua's types: drivers.opcua.values (a DataValue
as readings), drivers.opcua.subscription (the data-change handler, deadband filters) and
drivers.opcua.browse (the address space, for the browse tool). Certificates are pure
(drivers.opcua.certificates), and so are the failures' wording (drivers.opcua.problems).
Choices that shape it:

- **A fresh client per connection, and we own recovery.** asyncua's own reconnect
  (``auto_reconnect``) re-creates subscriptions with the NodeIds it had; after a server
  restart the namespace *indexes* may have changed, so those would point at the wrong nodes.
  Instead, a lost session (asyncua's keep-alive probe fails, or a request fails on the
  transport) makes ``read`` raise :class:`NotConnectedError`; the poller closes this client
  and calls ``connect`` again with its backoff, which builds a new client, resolves every
  ``namespace_uri`` to today's index, and creates the subscription again.
- **Polling is one Read service call** for all the device's poll tags (split only at
  ``max_nodes_per_read``).
- **Subscriptions hand over as changes arrive**: asyncua calls our handler for each data
  change; the handler appends to a bounded deque and wakes the poller
  (drivers.base.Pushes), which takes them at once (``take_changes``); ``read`` takes
  whatever is left. A change keeps the server's source timestamp.
- **Failures are named, not dumped**: every connect failure becomes one
  :class:`NotConnectedError` that says what to do (a server that does not trust our
  certificate yet, a server at its session or connection limit), and asyncua's own logging is
  off: the poller logs one line per episode naming the device, not a traceback per retry.
- **The server certificate is checked** against a configured certificate or folder (by its
  exact bytes, as OPC-UA trust lists do); it is accepted blindly only with an explicit
  ``trust_any_server_certificate: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen, security_policies
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract.codes import ErrorCode
from contract.records import Reading
from drivers.base import NotConnectedError
from drivers.opcua import problems
from drivers.opcua.browse import BrowsedNode, browse_nodes
from drivers.opcua.certificates import (
    application_uri_for,
    application_uri_of,
    fingerprint,
    trusted_certificates,
)
from drivers.opcua.config import (
    OpcUaCollect,
    OpcUaDevice,
    OpcUaMode,
    OpcUaPolicy,
    OpcUaTag,
)
from drivers.opcua.subscription import Changes, deadband_filter
from drivers.opcua.values import to_readings

log = logging.getLogger(__name__)
# asyncua warns at every connect about things we decide on purpose (a revised session
# timeout, plaintext endpoints listed by the server), and logs a traceback (at ERROR, some at
# CRITICAL) for every expected event: a server that went away, a refused secure channel.
# Every one of those also reaches this driver as an exception, which it names; the poller
# logs it once per episode. So asyncua's own log is off (for a deep dive, lower this level).
logging.getLogger("asyncua").setLevel(logging.CRITICAL + 1)

_POLICIES: dict[OpcUaPolicy, type[security_policies.SecurityPolicy]] = {
    OpcUaPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    OpcUaPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    OpcUaPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    OpcUaMode.SIGN: ua.MessageSecurityMode.Sign,
    OpcUaMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
#: The IANA port of opc.tcp, when an endpoint names none.
DEFAULT_PORT = 4840
# Errors that mean the session or its transport is gone.
_LINK_ERRORS = (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError, ua.UaError)


# Status codes a server gives for a rejected identity or certificate: said as such.
async def make_certificate(
    cert_file: Path, key_file: Path, application_uri: str | None = None, server: bool = False
) -> None:
    """Create a self-signed application certificate (DER) and key (PEM) for OPC-UA: what
    ``collector opcua-cert`` writes. The server must then trust the certificate."""
    host = socket.gethostname()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    await cert_gen.setup_self_signed_certificate(
        key_file, cert_file, application_uri or application_uri_for(host), host, usage, {}
    )


# --------------------------------------------------------------------------- the driver


@dataclass
class _Resolved:
    tag: OpcUaTag
    node_id: ua.NodeId


class OpcUaDriver:
    def __init__(self, device: OpcUaDevice, clock: Callable[[], float] = time.time) -> None:
        self.device = device
        self._clock = clock
        self._client: Client | None = None
        self._poll: list[_Resolved] = []
        self._changes: Changes | None = None
        self._lost: str | None = None
        self._namespaces: dict[str, int] = {}
        self._dropped_before = 0
        self._server_cert: str | None = None
        self._server_der: bytes | None = None
        self._on_change: Callable[[], None] = lambda: None
        # How far the last connect got (for naming its failure): socket, hello, channel,
        # session.
        self._phase = "socket"

    # ------------------------------------------------------------------ contract

    def peer_address(self) -> tuple[str, int]:
        """The server's host and port, probed while it is down (drivers.base.Reachable)."""
        url = urlsplit(self.device.endpoint)
        return url.hostname or "127.0.0.1", url.port or DEFAULT_PORT

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def take_changes(self) -> list[Reading]:
        """The subscribed changes received since the last take (drivers.base.Pushes)."""
        changes = self._changes
        if changes is None or not changes.queue:
            return []
        queue = changes.queue
        return [queue.popleft() for _ in range(len(queue))]

    @property
    def server_certificate_sha256(self) -> str | None:
        """The fingerprint of the certificate the server offered (None: none seen)."""
        return self._server_cert

    @property
    def server_certificate_der(self) -> bytes | None:
        """The certificate the server offered, as DER (for ``browse --save-server-cert``)."""
        return self._server_der

    @property
    def max_read_seconds(self) -> float:
        d = self.device
        reads = max(1, math.ceil(len(d.tags) / d.max_nodes_per_read))
        # connect: endpoints + channel + session + namespace read + subscription, each bounded
        return max(6, reads + 6) * d.timeout_ms / 1000

    def describe(self) -> str:
        d = self.device
        polled = [t for t in d.tags if d.collect_of(t) == OpcUaCollect.POLL]
        parts = [f"opcua {d.endpoint} ({d.security.policy}/{d.security.mode})"]
        if polled:
            reads = math.ceil(len(polled) / d.max_nodes_per_read)
            parts.append(f"{len(polled)} polled tag(s) in {reads} Read call(s)")
        subscribed = len(d.tags) - len(polled)
        if subscribed:
            parts.append(
                f"{subscribed} subscribed tag(s) (publishing {d.publishing_interval_ms} ms, "
                f"sampling {d.sampling_interval_ms} ms, queue {d.queue_size})"
            )
        return parts[0] + ": " + ", ".join(parts[1:])

    def details(self) -> dict[str, Any]:
        return {
            "endpoint": self.device.endpoint,
            "security": f"{self.device.security.policy}/{self.device.security.mode}",
            "namespaces": dict(self._namespaces),
            "server_certificate_sha256": self._server_cert,
            "subscription_changes_dropped": self._changes.dropped if self._changes else 0,
            "last_loss": self._lost,
        }

    async def connect(self) -> None:
        d = self.device
        client = Client(d.endpoint, timeout=d.timeout_ms / 1000, watchdog_intervall=d.keepalive_s)
        # Named after its certificate (servers check the application URI against it).
        client.name = client.description = "shopfloor-collector"
        client.application_uri = application_uri_for()
        client.connection_lost_callback = self._connection_lost
        self._lost = None
        self._phase = "socket"
        self._trace_phases(client)
        try:
            await self._secure(client)
            await self._identify(client)
            await client.connect()
        except ServiceError as exc:
            await self._discard(client)
            raise NotConnectedError(self._security_message(exc), ErrorCode.SECURITY) from exc
        except ua.UaStatusCodeError as exc:
            await self._discard(client)
            raise self._status_error(exc) from exc
        except (*_LINK_ERRORS, AssertionError) as exc:
            # AssertionError: asyncua's answer to a secure channel the server refused with a
            # message it did not expect (node-opcua's ERR for an untrusted certificate).
            await self._discard(client)
            raise self._connect_error(exc) from exc
        self._client = client
        try:
            resolved = await self._resolve(client)
            await self._subscribe(client, resolved)
        except _LINK_ERRORS as exc:
            await self.close()
            if isinstance(exc, ua.UaStatusCodeError):
                raise self._status_error(exc) from exc
            raise NotConnectedError(f"{d.endpoint}: set-up failed: {exc!r}") from exc

    async def read(self) -> list[Reading]:
        client = self._client
        if client is None:
            raise NotConnectedError(f"{self.device.endpoint}: not connected")
        lost = self._lost or (self._changes.lost if self._changes else None)
        if lost is not None:
            raise NotConnectedError(f"{self.device.endpoint}: {lost}")
        readings: list[Reading] = []
        if self._poll:
            ts = self._clock()
            size = self.device.max_nodes_per_read
            for start in range(0, len(self._poll), size):
                chunk = self._poll[start : start + size]
                try:
                    values = await client.uaclient.read_attributes(
                        [r.node_id for r in chunk], ua.AttributeIds.Value
                    )
                except ua.UaStatusCodeError as exc:
                    raise self._status_error(exc) from exc
                except _LINK_ERRORS as exc:
                    raise NotConnectedError(
                        f"{self.device.endpoint}: read failed: {exc!r}"
                    ) from exc
                for resolved, data in zip(chunk, values, strict=True):
                    readings.extend(to_readings(resolved.tag, data, ts))
        if self._changes is not None:
            queue = self._changes.queue
            readings.extend(queue.popleft() for _ in range(len(queue)))
            if self._changes.dropped > self._dropped_before:
                log.warning(
                    "%s: %d subscription change(s) dropped (max_buffered_changes)",
                    self.device.name,
                    self._changes.dropped - self._dropped_before,
                )
                self._dropped_before = self._changes.dropped
        return readings

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._discard(client)

    async def browse(
        self, max_depth: int = 6, max_nodes: int = 5000, standard: bool = False
    ) -> list[BrowsedNode]:
        """The address space under Objects, depth first, bounded in depth and node count;
        ``standard`` includes the OPC-UA standard's own objects (Server, ...). For the browse
        tool (drivers.opcua.tools), on a connected driver."""
        client = self._client
        if client is None:
            raise NotConnectedError(f"{self.device.endpoint}: not connected")
        return await browse_nodes(client, max_depth, max_nodes, standard)

    # ------------------------------------------------------------------ connect steps

    async def _secure(self, client: Client) -> None:
        security = self.device.security
        if security.policy is OpcUaPolicy.NONE:
            return
        assert security.certificate_file is not None
        assert security.private_key_file is not None
        uri = application_uri_of(security.certificate_file)
        if uri is not None:
            client.application_uri = uri
        trusted = trusted_certificates(security)

        async def check_server(cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
            # asyncua calls this with the certificate the session was created with.
            self._check_trusted(cert.public_bytes(Encoding.DER), trusted)

        client.certificate_validator = check_server
        # The server's certificate comes from its endpoint list (asyncua asks for it over an
        # unsecured channel, as the standard intends) and is checked before anything secret
        # (the user's password) is sent.
        await client.set_security(
            _POLICIES[security.policy],
            str(security.certificate_file),
            str(security.private_key_file),
            mode=_MODES[security.mode],
        )
        offered = client.security_policy.peer_certificate
        if offered is not None:
            self._check_trusted(offered, trusted)

    def _check_trusted(self, der: bytes, trusted: set[bytes]) -> None:
        self._server_cert, self._server_der = fingerprint(der), der
        if self.device.security.trust_any_server_certificate or der in trusted:
            return
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def _identify(self, client: Client) -> None:
        user = self.device.user
        if user.username is not None:
            client.set_user(user.username)
            password = user.password()
            if password is not None:
                client.set_password(password.get_secret_value())
        elif user.certificate_file is not None and user.private_key_file is not None:
            await client.load_client_certificate(str(user.certificate_file))
            await client.load_private_key(user.private_key_file)

    async def _resolve(self, client: Client) -> list[_Resolved]:
        """NodeIds for this connection: namespace URIs to today's indexes."""
        array = await client.get_namespace_array()
        self._namespaces = {uri: index for index, uri in enumerate(array)}
        resolved = []
        for tag in self.device.tags:
            if tag.node is not None:
                node_id = ua.NodeId.from_string(tag.node)
            else:
                assert tag.namespace_uri is not None
                assert tag.id is not None
                index = self._namespaces.get(tag.namespace_uri)
                if index is None:
                    raise NotConnectedError(
                        f"{self.device.endpoint}: the server has no namespace "
                        f"{tag.namespace_uri!r} (tag {tag.name}); it has: {', '.join(array)}",
                        ErrorCode.BAD_REPLY,
                    )
                node_id = ua.NodeId.from_string(f"ns={index};{tag.id}")
            resolved.append(_Resolved(tag, node_id))
        self._poll = [r for r in resolved if self.device.collect_of(r.tag) == OpcUaCollect.POLL]
        return resolved

    async def _subscribe(self, client: Client, nodes: list[_Resolved]) -> None:
        d = self.device
        wanted = [r for r in nodes if d.collect_of(r.tag) == OpcUaCollect.SUBSCRIBE]
        if not wanted:
            self._changes = None
            return
        dropped = self._changes.dropped if self._changes else 0
        changes = Changes({}, d.max_buffered_changes, self._on_change)
        changes.dropped = dropped
        subscription = await client.create_subscription(d.publishing_interval_ms, changes)
        requests = []
        for handle, resolved in enumerate(wanted, start=1):
            node = client.get_node(resolved.node_id)
            deadband = resolved.tag.deadband or d.deadband
            request = subscription._make_monitored_item_request(
                node,
                ua.AttributeIds.Value,
                deadband_filter(deadband),
                d.queue_size,
                ua.MonitoringMode.Reporting,
                ua.Double(float(d.sampling_interval_ms)),
            )
            request.RequestedParameters.ClientHandle = handle
            requests.append(request)
            changes.tags[handle] = resolved.tag
        results = await subscription.create_monitored_items(requests)
        refused = [
            f"{w.tag.name}: {r.name}"
            for w, r in zip(wanted, results, strict=True)
            if isinstance(r, ua.StatusCode)
        ]
        if refused:
            log.warning("%s: monitored items refused: %s", d.name, "; ".join(refused))
        self._changes = changes

    # ------------------------------------------------------------------ failures

    async def _connection_lost(self, exc: Exception) -> None:
        # Called by asyncua's supervisor when its keep-alive probe fails.
        self._lost = f"session lost ({exc!r})"

    def _status_error(self, exc: ua.UaStatusCodeError) -> NotConnectedError:
        code = exc.code
        name = ua.StatusCode(ua.UInt32(code)).name
        endpoint = self.device.endpoint
        if name in problems.LIMIT_STATUS:
            return NotConnectedError(
                problems.limit_reached(endpoint, problems.LIMIT_STATUS[name], name)
            )
        if name == "BadSecurityChecksFailed" and self._phase == "channel":
            return NotConnectedError(self._client_not_trusted(name), ErrorCode.SECURITY)
        if name in problems.SECURITY_STATUS:
            return NotConnectedError(
                f"{endpoint}: {problems.SECURITY_STATUS[name]} ({name})", ErrorCode.SECURITY
            )
        return NotConnectedError(f"{endpoint}: {name}")

    def _connect_error(self, exc: BaseException) -> NotConnectedError:
        """A connect that failed on the transport (or in asyncua's own checks), named by how
        far it got."""
        endpoint = self.device.endpoint
        if "certificate mismatch" in str(exc).lower():
            return NotConnectedError(
                problems.other_server_certificate(endpoint), ErrorCode.SECURITY
            )
        secure = self.device.security.policy is not OpcUaPolicy.NONE
        if self._phase == "channel" and secure and not isinstance(exc, TimeoutError):
            # The server ended the secure channel we asked for: what servers do with a client
            # certificate they do not trust (yet).
            return NotConnectedError(
                self._client_not_trusted("secure channel refused"), ErrorCode.SECURITY
            )
        if self._phase == "hello" and not isinstance(exc, TimeoutError):
            # The server took the TCP connection and closed it before answering Hello: what
            # asyncua and others do at their connection limit.
            return NotConnectedError(
                problems.limit_reached(
                    endpoint, "connection", "connection closed right after Hello"
                )
            )
        return NotConnectedError(f"{endpoint}: cannot connect: {exc!r}")

    def _client_not_trusted(self, why: str) -> str:
        return problems.client_not_trusted(
            self.device.endpoint, self.device.security.certificate_file, why
        )

    def _trace_phases(self, client: Client) -> None:
        """Note how far ``client.connect`` gets, so that a failure can be named by its step
        (asyncua reports a refused channel and a closed socket with the same exceptions)."""
        driver = self

        def step(name: str, after: str) -> None:
            inner = getattr(client, name)

            during, done = after.split(">")

            async def traced(*args: Any, **kwargs: Any) -> Any:
                driver._phase = during
                result = await inner(*args, **kwargs)
                driver._phase = done
                return result

            setattr(client, name, traced)

        step("send_hello", "hello>channel")
        step("open_secure_channel", "channel>session")

    def _security_message(self, exc: ServiceError) -> str:
        if exc.code == ua.StatusCodes.BadCertificateUntrusted:
            return problems.server_not_trusted(self.device.endpoint, self._server_cert)
        return f"{self.device.endpoint}: {ua.StatusCode(ua.UInt32(exc.code)).name}"

    @staticmethod
    async def _discard(client: Client) -> None:
        """Close a client, bounded: a dead server must not hold up the reconnect."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2.0)
        with contextlib.suppress(Exception):
            client.disconnect_socket()
