"""The store's configuration (store.yaml): one declaration per option, validated at load.

``load_store_config(path)`` returns a frozen :class:`StoreConfig` or raises
:class:`~common.errors.ConfigError` whose problems read ``FILE:LINE: field.path: problem``;
unknown keys are rejected. Nothing here touches the network or the database.
config/store.yaml is the commented example (loaded by a test); docs/store.md lists the options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from common.config import ReconnectBackoff, secret
from common.errors import ConfigError
from common.yamlmodel import parse_yaml_model, read_text
from store.record.people import PersonConfig, TokenSource, token_problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Secret(_Model):
    password_env: str | None = Field(
        default=None, description="Environment variable holding the password."
    )
    password_file: Path | None = Field(default=None, description="File holding the password.")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        return self

    def password(self) -> SecretStr | None:
        return secret(self.password_env, self.password_file)


class DatabaseConfig(_Secret):
    url: str = Field(
        default="sqlite:///store.db",
        pattern=r"^(sqlite:///.+|postgresql(\+psycopg)?://.*)$",
        description="sqlite:///PATH (no server) or postgresql://USER@HOST:PORT/DB (psycopg 3). "
        "Put no password here: use password_env or password_file.",
    )
    sqlite_synchronous: str = Field(
        default="full",
        pattern="^(full|normal)$",
        description="SQLite only: full survives a power cut after the acknowledgement; normal "
        "survives a crash of the store but may lose the last commits on a power cut.",
    )
    timescaledb: bool = Field(
        default=True,
        description="PostgreSQL only: make readings a hypertable when the timescaledb "
        "extension is installed in the database (nothing happens without it).",
    )
    migrate: str = Field(
        default="auto",
        pattern="^(auto|off)$",
        description="auto: bring the schema to this version's at start (once, whoever starts "
        "first); off: refuse to start on a database not at it (`collector store migrate` "
        "upgrades it).",
    )

    @field_validator("migrate", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads an unquoted ``off`` (and ``on``) as a boolean."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value


class TlsConfig(_Model):
    ca_file: Path = Field(description="CA certificate(s) that signed the broker's certificate.")
    cert_file: Path | None = Field(default=None, description="Client certificate (optional).")
    key_file: Path | None = Field(default=None, description="Client key (with cert_file).")


class MqttConfig(_Secret, ReconnectBackoff):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    client_id: str = Field(
        default="collector-store",
        min_length=1,
        max_length=128,
        description="MQTT client id: stable (it names the persistent session), and different "
        "for each store process of a shared subscription.",
    )
    username: str | None = Field(default=None, description="MQTT user name.")
    tls: TlsConfig | None = Field(default=None, description="Enable TLS (and set its files).")
    topic_prefix: str = Field(
        default="collector", pattern=r"^[^#+\s]+$", description="The collectors' topic prefix."
    )
    shared_group: str | None = Field(
        default=None,
        pattern=r"^[^/#+\s]+$",
        description="Subscribe as $share/GROUP/...: the store processes of one group split "
        "the messages between them.",
    )
    session_expiry_s: int = Field(
        default=7 * 86_400,
        ge=60,
        le=0xFFFFFFFE,
        description="How long the broker keeps the session (and queues messages) while this "
        "store is away.",
    )
    receive_maximum: int = Field(
        default=200,
        ge=1,
        le=65_535,
        description="Messages the broker may send before the store acknowledges: bounds the "
        "store's memory. Twice ingest.max_batch_messages lets the next batch arrive while "
        "one is written.",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive (s).")
    # reconnect_min_ms, reconnect_max_ms: ReconnectBackoff.
    # StoreConfig checks their order, naming them mqtt.reconnect_*.
    check_reconnect_order: ClassVar[bool] = False


class IngestConfig(_Model):
    max_batch_messages: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Messages written in one transaction, at most (and acknowledged after it).",
    )
    max_batch_wait_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="How long the first message of a batch waits for more.",
    )
    retry_min_ms: int = Field(default=500, ge=10, description="First retry after a DB error.")
    retry_max_ms: int = Field(default=30_000, ge=10, description="Longest retry delay.")
    quarantine_max_bytes: int = Field(
        default=65_536,
        ge=0,
        le=16 * 1024 * 1024,
        description="A quarantined payload is kept up to this many bytes (the size is noted); "
        "a parked one (waiting for its meta version) is kept whole.",
    )
    # Parking (readings messages waiting for a meta version the store has not seen) is bounded
    # three ways; past any bound the oldest parked messages are dropped into quarantine (kind
    # parked_dropped), counted and logged (store.parking). A collector republishes the versions
    # its buffer still needs on every connect, so a version that is not here within minutes is
    # lost or never existed (a broken or hostile publisher).
    parked_max_messages: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Readings messages parked at once, at most; the oldest go first.",
    )
    parked_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024 * 1024,
        description="Bytes of parked payloads at once, at most; the oldest go first.",
    )
    parked_max_age_s: float = Field(
        default=86_400.0,
        gt=0,
        le=365 * 86_400.0,
        description="A message parked longer than this is dropped into quarantine.",
    )
    # The quarantine (bad messages, and parked ones dropped at a parking bound) is bounded three
    # ways too; past any bound the oldest rows are pruned, counted per kind, a warning on
    # /health (store.quarantine). Parked messages count against parked_max_*, not these.
    quarantine_max_rows: int = Field(
        default=10_000,
        ge=10,
        le=100_000_000,
        description="Quarantined messages kept at once, at most; the oldest are pruned first.",
    )
    quarantine_max_total_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024 * 1024,
        description="Payload bytes kept in quarantine at once, at most (each payload as kept: "
        "cut to quarantine_max_bytes, or whole when dropped from parking); the oldest go first.",
    )
    quarantine_max_age_days: float = Field(
        default=90.0,
        gt=0,
        le=3650,
        description="A quarantined message older than this is pruned.",
    )

    @field_validator("quarantine_max_total_bytes")
    @classmethod
    def _total_holds_one(cls, value: int, info: ValidationInfo) -> int:
        """A payload cut to quarantine_max_bytes must fit the total: else each bad message
        would prune every older one."""
        each = info.data.get("quarantine_max_bytes")
        if each is not None and value < each:
            raise ValueError(
                f"is {value}, must be >= ingest.quarantine_max_bytes ({each}): "
                "one kept payload must fit"
            )
        return value


class GapsConfig(_Model):
    alert_after_s: float = Field(
        default=600.0,
        gt=0,
        description="A missing seq range still open after this long is flagged on /health.",
    )


class AcksConfig(_Model):
    enabled: bool = Field(
        default=True,
        description="Publish store acknowledgements on each collector's {base}/ack topic: "
        "what is committed, so the collector deletes only that (docs/guarantees.md).",
    )
    min_interval_ms: int = Field(
        default=200,
        ge=10,
        le=60_000,
        description="At most one acknowledgement per stream this often (the latest state wins).",
    )
    interval_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Every stream active in the last hour is acknowledged again this often, "
        "so a collector learns the store is alive and can detect a lost tail.",
    )
    resend_after_s: float = Field(
        default=5.0,
        ge=0,
        description="A missing seq range open this long is asked for again (resend).",
    )
    max_ranges: int = Field(
        default=100, ge=1, le=10_000, description="Holes and resend ranges per ack, at most."
    )


class RetentionConfig(_Model):
    readings_max_age_days: float | None = Field(
        default=None,
        gt=0,
        description="Prune raw readings older than this (unit records and characteristics "
        "are kept). None: keep everything.",
    )
    prune_interval_s: float = Field(
        default=3600.0, ge=10, description="How often the service prunes."
    )


class HttpConfig(_Model):
    enabled: bool = Field(
        default=True, description="Serve /health, /metrics, /gaps, /units and /report."
    )
    host: str = Field(
        default="127.0.0.1",
        description="Bind address; loopback by default. Set 0.0.0.0 only on a trusted network.",
    )
    port: int = Field(default=8190, ge=0, le=65535, description="HTTP port (0: any free port).")
    read_token: TokenSource | None = Field(
        default=None,
        description="When set, every read but /health and /metrics needs this bearer token "
        "(or a person's); docs/pilot-record.md.",
    )


class ReportConfig(_Model):
    protocol: Path = Field(
        description="The pilot protocol file (docs/report.md) that GET /report judges the "
        "stored run against; a relative path is relative to this store.yaml's folder."
    )


class StoreConfig(_Model):
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    gaps: GapsConfig = Field(default_factory=GapsConfig)
    acks: AcksConfig = Field(default_factory=AcksConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    report: ReportConfig | None = Field(
        default=None, description="Serve the pilot-run report on GET /report (optional)."
    )
    people: tuple[PersonConfig, ...] = Field(
        default=(),
        description="Who may write the pilot record, for which functions, with which bearer "
        "token (docs/pilot-record.md); nobody: the record is read-only.",
    )

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        problem = self.mqtt.reconnect_order_problem("mqtt.")
        if problem is not None:
            raise ValueError(problem)
        if self.ingest.retry_max_ms < self.ingest.retry_min_ms:
            raise ValueError("ingest.retry_max_ms must be >= ingest.retry_min_ms")
        return self


# --- loading with FILE:LINE (common.yamlmodel: bounded, UTF-8, no duplicate keys) -----


def parse_store_config(text: str, filename: str = "<store config>") -> StoreConfig:
    return parse_yaml_model(text, StoreConfig, filename, docs="docs/store.md", empty_ok=True)


def load_store_config(path: Path | str) -> StoreConfig:
    """Read and validate store.yaml, and check that its secrets can be resolved."""
    path = Path(path)
    config = parse_store_config(read_text(path), str(path))
    problems = []
    if config.report is not None:
        config, problem = _with_protocol(config, config.report, path)
        problems.extend(problem)
    for section, owner in (("database", config.database), ("mqtt", config.mqtt)):
        try:
            owner.password()
        except OSError as exc:
            problems.append(f"{path}:1: {section}.password_file: cannot read: {exc.strerror}")
        if owner.password_env is not None and owner.password_env not in os.environ:
            problems.append(
                f"{path}:1: {section}.password_env: environment variable "
                f"{owner.password_env} is not set"
            )
    problems.extend(token_problems(config.people, config.http.read_token, f"{path}:1"))
    if problems:
        raise ConfigError(problems)
    return config


def _with_protocol(
    config: StoreConfig, report: ReportConfig, path: Path
) -> tuple[StoreConfig, list[str]]:
    """The report's protocol path made absolute (relative to store.yaml) and checked at load,
    so that a wrong protocol stops `collector store check` and start-up, not the first page."""
    from store.report.protocol import load_protocol  # noqa: PLC0415 - only with a report

    protocol = report.protocol if report.protocol.is_absolute() else path.parent / report.protocol
    config = config.model_copy(update={"report": report.model_copy(update={"protocol": protocol})})
    try:
        load_protocol(protocol)
    except ConfigError as exc:
        return config, list(exc.problems)  # each names the protocol file and its line
    return config, []
