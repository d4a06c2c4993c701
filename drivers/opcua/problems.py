"""What an OPC-UA connect failure means, in a technician's words (pure: no asyncua, no network).

The driver (drivers.opcua.driver) names each failure by the server's StatusCode name or by how
far the connect got, and takes the text from here, so that /health, the log (one line per
episode) and ``collector browse`` say the same thing. docs/opcua.md lists them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from drivers.opcua.certificates import fingerprint, load_der

#: StatusCodes for a rejected identity or certificate (error code ``security``).
SECURITY_STATUS = {
    "BadUserAccessDenied": "user rejected (wrong user name or password?)",
    "BadIdentityTokenInvalid": "user identity rejected",
    "BadIdentityTokenRejected": "user identity rejected",
    "BadCertificateUntrusted": "certificate not trusted",
    "BadSecurityChecksFailed": "security checks failed (is our certificate trusted by the server?)",
    "BadSecurityPolicyRejected": "security policy rejected by the server",
}
#: StatusCodes of a server at its limit of sessions or connections: what is limited.
LIMIT_STATUS = {
    "BadTooManySessions": "session",
    "BadMaxConnectionsReached": "connection",
}


def limit_reached(endpoint: str, what: str, why: str) -> str:
    return (
        f"{endpoint}: the server has reached its {what} limit ({why}); close other clients' "
        f"{what}s (another collector, a UA client left open) or raise the server's limit; "
        "retried with backoff"
    )


def client_not_trusted(endpoint: str, certificate: Path | None, why: str) -> str:
    """The server refused our certificate: which one to trust, and where."""
    ours = ""
    if certificate is not None:
        with contextlib.suppress(OSError, ValueError):
            ours = f" (sha256 {fingerprint(load_der(certificate))})"
    return (
        f"{endpoint}: the server does not trust this collector's certificate yet ({why}): "
        f"trust {certificate}{ours} on the server (copy it into its trusted client "
        "certificates, e.g. pki/trusted/certs, or accept it among the rejected ones in its "
        "UI); retried with backoff"
    )


def server_not_trusted(endpoint: str, sha256: str | None) -> str:
    return (
        f"{endpoint}: server certificate not trusted (sha256 {sha256}); if it is the right "
        "server, copy its certificate into security.trusted_certificates_dir or set "
        "server_certificate_file (collector browse --trust-any-server --save-server-cert "
        "FILE saves it)"
    )


def other_server_certificate(endpoint: str) -> str:
    return (
        f"{endpoint}: the server presented another certificate than the one configured "
        "(server_certificate_file)"
    )
