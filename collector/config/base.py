"""The collector's own sections: ``collector`` (identity), ``buffer``, ``mqtt`` and ``health``.

One declaration per option (type, default, description); docs/configuration.md documents each.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from common.config import Host, ReconnectBackoff, ReconnectMinMs
from common.config import Model as _Model
from common.config import secret as _secret

# MQTT topic levels must not contain wildcards or separators.
TOPIC_LEVEL_PATTERN = r"^[^/#+\s]+$"


class Identity(_Model):
    id: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN, max_length=64)] = Field(
        description="Collector id: unique per collector; part of the MQTT topic and the dedupe key."
    )
    site: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN, max_length=64)] = Field(
        description="Site (plant) name, part of the MQTT topic."
    )
    line: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN, max_length=64)] = Field(
        description="Production line name, part of the MQTT topic."
    )


class Synchronous(StrEnum):
    FULL = "full"
    NORMAL = "normal"


class BufferConfig(_Model):
    path: Path = Field(description="SQLite file of the outbox; its folder must be writable.")
    max_readings: int = Field(
        default=5_000_000,
        ge=1000,
        description="Cap on buffered readings; when full, the oldest are dropped and counted.",
    )
    synchronous: Synchronous = Field(
        default=Synchronous.FULL,
        description="SQLite synchronous mode: full survives power loss; normal (WAL) may lose "
        "the last commits on power loss but never corrupts.",
    )
    commit_interval_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Least time between two commits: the polls of that time go in one "
        "transaction (one fsync) and one message. Lower: less latency; higher: less CPU.",
    )

    @field_validator("path", mode="before")
    @classmethod
    def _a_file_name(cls, value: object) -> object:
        # What no machine can open, said here so that check says it: "" would be the working
        # folder, a NUL ends in "embedded null byte" when run opens it (YAML's "\0" escape
        # passes the loader's character check), a trailing / names a folder.
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(
                    "is empty: give the SQLite file, e.g. /var/lib/collector/buffer.db"
                )
            if "\0" in value:
                raise ValueError(f"{value!r} contains a NUL character")
            if value.endswith("/"):
                raise ValueError(f"{value!r} names a folder: give the SQLite file inside it")
        return value


# --------------------------------------------------------------------------- MQTT


class TlsConfig(_Model):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttVersion(StrEnum):
    V5 = "5"
    V311 = "3.1.1"


class ValueKeys(StrEnum):
    """How a poll's values name their tags (docs/messages.md)."""

    #: ``tag_index`` (or ``tag_list``) + ``v``: names once in the meta message, values by
    #: position, the device named by the meta version.
    POSITION = "position"
    #: ``tags`` + ``v``, the device named: self-describing, about 5 bytes a reading more.
    NAME = "name"


class Delivery(StrEnum):
    """When a reading leaves the buffer (docs/guarantees.md)."""

    #: Only once the central store acknowledged it committed (on {base}/ack).
    STORE = "store"
    #: On the broker's PUBACK: for consumers without a store; a broker that loses a message
    #: after its PUBACK (a restart without persistence, a full queue) loses it for good.
    BROKER = "broker"


class MqttConfig(ReconnectBackoff):
    host: Host = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    client_id: str | None = Field(
        default=None, max_length=128, description="MQTT client id; default: the collector id."
    )
    version: MqttVersion = Field(default=MqttVersion.V5, description="MQTT protocol version.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive (s).")
    topic_prefix: str = Field(
        default="collector",
        pattern=r"^[^#+\s]+$",
        description="First topic level(s); see docs/messages.md.",
    )
    username: str | None = Field(default=None, description="MQTT user name.")
    password_env: str | None = Field(
        default=None, description="Name of the environment variable holding the password."
    )
    password_file: Path | None = Field(default=None, description="File holding the password.")
    tls: TlsConfig | None = Field(default=None, description="Enable TLS (and set its files).")
    max_message_bytes: int = Field(
        default=256 * 1024, ge=1024, le=256 * 1024 * 1024, description="Cap on one message."
    )
    max_readings_per_message: int = Field(
        default=500, ge=1, le=100_000, description="Cap on readings in one message."
    )
    value_keys: ValueKeys = Field(
        default=ValueKeys.POSITION,
        description="position: values by position in the device's meta order (fewer bytes); "
        "name: keyed by tag name, for consumers that cannot keep the metadata.",
    )
    max_inflight_messages: int = Field(
        default=8, ge=1, le=100, description="Messages published and not yet acknowledged."
    )
    shutdown_grace_s: float = Field(
        default=5.0, ge=0, le=300, description="On SIGTERM, time given to deliver the buffer."
    )
    # The broker's first reconnect waits longer than a device's (docs/configuration.md);
    # reconnect_max_ms and the order check: ReconnectBackoff.
    reconnect_min_ms: ReconnectMinMs = 1000
    delivery: Delivery = Field(
        default=Delivery.STORE,
        description="store: a reading leaves the buffer once the central store acknowledged "
        "it committed; broker: on the broker's PUBACK (no store; a broker that loses a "
        "message after its PUBACK loses it for good).",
    )
    store_resend_after_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="delivery store: readings sent this long ago and not covered by the "
        "store's acknowledgements, while they keep coming, are sent again.",
    )
    store_ack_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="delivery store: /health degrades when readings wait for the store and "
        "no store acknowledgement came for this long.",
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        return self

    def password(self) -> SecretStr | None:
        """Resolve the password from its environment variable or file (read at start-up)."""
        return _secret(self.password_env, self.password_file)


# --------------------------------------------------------------------------- health


class TaggingConfig(_Model):
    """How long readings wait for a station's first serial read at start-up
    (collector.context.firstread, docs/traceability.md)."""

    first_serial_wait_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Readings of a station whose serial is a polled device tag wait at most "
        "this long (seconds, from the station's first held reading) for its first serial "
        "read; then they go out tagged by their own time and are counted (released "
        "untagged).",
    )
    first_serial_max_readings: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        description="Readings held for first serial reads at once, at most (all stations); "
        "past it the station that waited longest goes out untagged, counted.",
    )


class HealthConfig(_Model):
    enabled: bool = Field(default=True, description="Serve /health and /status.")
    host: str = Field(
        default="127.0.0.1",
        description="Bind address; loopback by default. Set 0.0.0.0 only on a trusted network.",
    )
    port: int = Field(default=8180, ge=0, le=65535, description="HTTP port (0: any free port).")
    token_env: str | None = Field(
        default=None,
        description="Environment variable holding the bearer token for the endpoints that "
        "change state (POST /stations/{name}/unit, POST /deviations). No token: those "
        "endpoints are off.",
    )
    token_file: Path | None = Field(default=None, description="File holding that token.")
    max_unsent_age_s: float | None = Field(
        default=300.0,
        gt=0,
        description="/health degrades when the oldest reading not yet delivered is older than "
        "this (seconds): a broker that is connected but does not take the backlog. null: off.",
    )

    @model_validator(mode="after")
    def _one_token_source(self) -> Self:
        if self.token_env is not None and self.token_file is not None:
            raise ValueError("give token_env or token_file, not both")
        return self

    @property
    def unit_api_enabled(self) -> bool:
        return self.enabled and (self.token_env is not None or self.token_file is not None)

    def token(self) -> SecretStr | None:
        """The bearer token, resolved at start-up; None when the state-changing API is off."""
        return _secret(self.token_env, self.token_file)
