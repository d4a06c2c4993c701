"""OPC-UA technician tools: ``collector browse`` (the server's nodes, to copy NodeIds) and
``collector opcua-cert`` (this collector's certificate). Browse connects with the driver itself,
so its security checks and its connect-error messages are the driver's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from common.errors import EXIT_CONFIG, EXIT_STARTUP
from drivers.base import NotConnectedError
from drivers.opcua.browse import BrowsedNode
from drivers.opcua.certificates import application_uri_for, fingerprint
from drivers.opcua.config import OpcUaDevice, OpcUaSecurity
from drivers.opcua.driver import OpcUaDriver, make_certificate

#: Where ``collector browse --user`` takes the password from.
PASSWORD_ENV = "OPCUA_PASSWORD"  # noqa: S105 - the variable's name, not a password


async def browse(  # noqa: PLR0917 - mirrors the command line's options
    endpoint: str,
    security: OpcUaSecurity,
    username: str | None = None,
    password_env: str | None = None,
    max_depth: int = 6,
    max_nodes: int = 5000,
    timeout_s: float = 5.0,
    standard: bool = False,
    server_certificate: Callable[[bytes], None] | None = None,
) -> list[BrowsedNode]:
    """The address space under Objects, depth first, bounded in depth and node count;
    ``standard`` includes the OPC-UA standard's own objects (Server, ...). The password, if
    any, is read from the environment variable ``password_env``. ``server_certificate`` is
    given the certificate the server showed (DER), also when the connection then fails."""
    user: dict[str, object] = {}
    if username is not None:
        user = {"username": username, "password_env": password_env}
    device = OpcUaDevice.model_validate(
        {
            "name": "browse",
            "protocol": "opcua",
            "endpoint": endpoint,
            "timeout_ms": int(timeout_s * 1000),
            "security": security.model_dump(),
            "user": user,
            # The server's clock (i=2258) is in every address space: a tag the driver resolves.
            "tags": [{"name": "x", "node": "i=2258"}],
        }
    )
    driver = OpcUaDriver(device)
    try:
        await driver.connect()
    finally:
        der = driver.server_certificate_der
        if der is not None and server_certificate is not None:
            server_certificate(der)
    try:
        return await driver.browse(max_depth, max_nodes, standard)
    finally:
        await driver.close()


def browse_command(args: argparse.Namespace) -> int:
    """``collector browse opc.tcp://...``: the server's nodes, to copy NodeIds."""
    policy, _, mode = args.security.partition(",")
    try:
        security = OpcUaSecurity.model_validate(
            {
                "policy": policy,
                "mode": mode or "None",
                "certificate_file": args.cert,
                "private_key_file": args.key,
                "server_certificate_file": args.server_cert,
                "trust_any_server_certificate": args.trust_any_server,
            }
        )
    except ValidationError as exc:
        for error in exc.errors():
            print(
                f"browse: --security: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr
            )
        return EXIT_CONFIG
    save_to: Path | None = getattr(args, "save_server_cert", None)

    def show_certificate(der: bytes) -> None:
        # Before anything else: a technician compares it with the one the server displays.
        print(f"server certificate sha256 {fingerprint(der)}", flush=True)
        if save_to is not None:
            save_to.write_bytes(der)
            print(f"saved the server certificate to {save_to} (DER)", flush=True)

    try:
        nodes = asyncio.run(
            browse(
                args.endpoint,
                security,
                args.user,
                PASSWORD_ENV if args.user is not None else None,
                max_depth=args.depth,
                max_nodes=args.max_nodes,
                standard=args.all,
                server_certificate=show_certificate,
            )
        )
    except NotConnectedError as exc:
        print(f"browse: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except OSError as exc:  # --save-server-cert FILE cannot be written
        print(f"browse: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    for node in nodes:
        print(node.line())
    uris = sorted({n.namespace_uri for n in nodes if n.namespace_uri})
    if uris:
        print("\nNamespace URIs (namespace_uri + id survive a server restart; ns=N may not):")
        for uri in uris:
            print(f"  {uri}")
    if len(nodes) >= args.max_nodes:
        print(f"(stopped after {args.max_nodes} nodes: --max-nodes)")
    return 0


def opcua_cert_command(cert: Path, key: Path) -> int:
    """``collector opcua-cert``: this collector's application certificate and key."""
    if cert.exists() or key.exists():
        print(f"opcua-cert: {cert} or {key} exists already; not overwritten", file=sys.stderr)
        return EXIT_CONFIG
    asyncio.run(make_certificate(cert, key))
    os.chmod(key, 0o600)
    print(
        f"wrote {cert} (application URI {application_uri_for()}) and {key} (mode 600).\n"
        "Copy the certificate to the server's trusted clients (e.g. its pki/trusted folder)."
    )
    return 0
