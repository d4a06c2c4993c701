"""OPC-UA application certificates, pure (no asyncua, no network): fingerprints, the server
certificates a config trusts, the application URI a certificate names. ``collector opcua-cert``
creates them (drivers.opcua.driver.make_certificate)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.opcua.config import OpcUaSecurity


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def load_der(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


def trusted_certificates(security: OpcUaSecurity) -> set[bytes]:
    """The DER bytes of every server certificate the config trusts."""
    trusted: set[bytes] = set()
    if security.server_certificate_file is not None:
        trusted.add(load_der(security.server_certificate_file))
    folder = security.trusted_certificates_dir
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".der", ".pem", ".crt", ".cer"):
                with contextlib.suppress(ValueError, OSError):
                    trusted.add(load_der(path))
    return trusted


def application_uri_of(certificate: Path) -> str | None:
    """The URI in the certificate's subjectAltName: the client must announce the same."""
    cert = x509.load_der_x509_certificate(load_der(certificate))
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    return None


def application_uri_for(host: str | None = None) -> str:
    return f"urn:{host or socket.gethostname()}:shopfloor-collector"
