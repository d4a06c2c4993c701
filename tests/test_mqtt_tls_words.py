"""What the collector says when a TLS connect to the broker fails (pure logic: the words for
each case; tests/faults/test_security.py does the same against a real mosquitto)."""

from __future__ import annotations

from pathlib import Path

from collector.config.base import TlsConfig
from collector.delivery.mqtt import explain_failure

EOF_TEXT = "EOF occurred in violation of protocol (_ssl.c:2427)"
WITH_CERT = TlsConfig(ca_file=Path("ca.pem"), cert_file=Path("c.pem"), key_file=Path("c.key"))


def test_an_alert_is_named_with_what_to_set() -> None:
    said = explain_failure("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", True, WITH_CERT)
    assert said.startswith("TLS alert 'unknown ca': the broker does not trust the CA that signed")


def test_a_close_after_the_handshake_with_a_client_certificate_points_at_the_certificate() -> None:
    """The broker's verdict on our certificate can be lost when it closes at once."""
    said = explain_failure(EOF_TEXT, True, WITH_CERT, before_connack=True)
    assert said == (
        "the broker closed the TLS connection before answering CONNECT: it most likely refused "
        "our client certificate (mqtt.tls.cert_file): is it signed by a CA in the broker's "
        f"cafile, and still valid? ({EOF_TEXT})"
    )


def test_a_close_without_a_client_certificate_or_without_tls_says_what_fits() -> None:
    no_cert = TlsConfig(ca_file=Path("ca.pem"))
    assert explain_failure(EOF_TEXT, True, no_cert, before_connack=True) == (
        f"the broker closed the connection before answering CONNECT ({EOF_TEXT})"
    )
    assert explain_failure("connection reset", False, None, before_connack=True).startswith(
        "the broker closed the connection before answering CONNECT: a TLS port?"
    )
    assert explain_failure("timed out", True, WITH_CERT) == "timed out"
