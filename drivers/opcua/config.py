"""Config models of OPC-UA devices (``opcua``): endpoint, security, user, tags. No asyncua here:
the registry imports this module for the config's device union."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from common.config import FileKind, SecretEnv, SecretFile, TagName
from common.config import Model as _Model
from common.config import reject_duplicates as _reject_duplicates
from common.config import secret as _secret
from drivers.base import DeviceBase


class OpcUaPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class OpcUaMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaSecurity(_Model):
    policy: OpcUaPolicy = Field(default=OpcUaPolicy.NONE, description="Security policy.")
    mode: OpcUaMode = Field(default=OpcUaMode.NONE, description="Message security mode.")
    certificate_file: Path | None = Field(
        default=None, description="This client's application certificate (DER or PEM)."
    )
    private_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    server_certificate_file: Path | None = Field(
        default=None, description="The server certificate to trust (DER or PEM)."
    )
    trusted_certificates_dir: Path | None = Field(
        default=None, description="A folder of trusted server certificates (*.der, *.pem)."
    )
    trust_any_server_certificate: bool = Field(
        default=False,
        description="Accept any server certificate (no protection against a fake server). "
        "Only for a first test; never the default.",
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.policy is OpcUaPolicy.NONE) != (self.mode is OpcUaMode.NONE):
            raise ValueError(
                "policy None goes with mode None; the other policies need mode Sign or "
                "SignAndEncrypt"
            )
        if self.policy is not OpcUaPolicy.NONE:
            if self.certificate_file is None or self.private_key_file is None:
                raise ValueError(
                    f"policy {self.policy} needs certificate_file and private_key_file (see "
                    "docs/opcua.md for how to create them)"
                )
            if not (
                self.server_certificate_file
                or self.trusted_certificates_dir
                or self.trust_any_server_certificate
            ):
                raise ValueError(
                    "give server_certificate_file or trusted_certificates_dir to check the "
                    "server's certificate (or, knowingly, trust_any_server_certificate: true)"
                )
        return self


class OpcUaUser(_Model):
    username: str | None = Field(default=None, description="User name (with a password).")
    password_env: str | None = Field(default=None, description="Variable holding the password.")
    password_file: Path | None = Field(default=None, description="File holding the password.")
    certificate_file: Path | None = Field(
        default=None, description="A user certificate (X.509 identity) instead of a password."
    )
    private_key_file: Path | None = Field(default=None, description="That certificate's key.")

    @model_validator(mode="after")
    def _one_identity(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        by_password = self.username is not None
        by_certificate = self.certificate_file is not None or self.private_key_file is not None
        if by_password and by_certificate:
            raise ValueError("give username/password or a user certificate, not both")
        if by_certificate and (self.certificate_file is None or self.private_key_file is None):
            raise ValueError("a user certificate needs certificate_file and private_key_file")
        if (self.password_env or self.password_file) and not by_password:
            raise ValueError("a password needs a username")
        return self

    def password(self) -> SecretStr | None:
        return _secret(self.password_env, self.password_file)


class OpcUaCollect(StrEnum):
    POLL = "poll"
    SUBSCRIBE = "subscribe"


class Deadband(_Model):
    type: Literal["absolute", "percent"] = Field(
        description="absolute: in the value's unit; percent: of the node's EURange."
    )
    value: float = Field(gt=0, description="Changes smaller than this are not reported.")


class OpcUaTag(_Model):
    name: TagName = Field(description="Tag name, unique per device.")
    node: str | None = Field(
        default=None,
        description="NodeId, e.g. 'ns=2;s=Rack1.Slot03.Temp' or 'i=2258'. Namespace indexes "
        "can change when the server restarts: prefer namespace_uri + id.",
    )
    namespace_uri: str | None = Field(
        default=None, description="Namespace URI, resolved to its index at every connect."
    )
    id: str | None = Field(
        default=None, description="With namespace_uri: the identifier, e.g. 's=Rack1.Slot03.Temp'."
    )
    collect: OpcUaCollect | None = Field(default=None, description="Overrides the device's.")
    deadband: Deadband | None = Field(default=None, description="Overrides the device's.")
    unit: str | None = Field(default=None, description="Engineering unit.")
    scale: float = Field(default=1.0, description="value * scale + offset (numbers only).")
    offset: float = Field(default=0.0)
    slot: int | None = Field(
        default=None,
        description="The rack slot this tag belongs to (set by `slots` expansion, or by hand).",
    )

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node is None) == (self.namespace_uri is None):
            raise ValueError("give node (a NodeId string) or namespace_uri + id, not both")
        if (self.namespace_uri is None) != (self.id is None):
            raise ValueError("namespace_uri and id go together")
        node = self.node if self.node is not None else self.id
        assert node is not None
        if not re.fullmatch(r"(ns=\d+;)?[isgb]=.+", node):
            raise ValueError(
                f"{node!r} is not a NodeId: expected e.g. 'ns=2;s=Name', 'ns=3;i=1001' (or, "
                "with namespace_uri, 's=Name' / 'i=1001')"
            )
        if self.namespace_uri is not None and node.startswith("ns="):
            raise ValueError("with namespace_uri, id has no 'ns=' part")
        return self


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"] = Field(description="An OPC-UA server.")
    endpoint: str = Field(
        pattern=r"^opc\.tcp://[^/\s]+(/\S*)?$", description="opc.tcp://HOST:PORT[/path]"
    )
    collect: OpcUaCollect = Field(
        default=OpcUaCollect.POLL,
        description="poll: one Read of all poll tags per poll_interval_ms; subscribe: the "
        "server reports changes (monitored items).",
    )
    publishing_interval_ms: int = Field(
        default=50, ge=10, le=3_600_000, description="Subscription publishing interval."
    )
    sampling_interval_ms: int = Field(
        default=250, ge=0, le=3_600_000, description="Monitored items' sampling interval."
    )
    queue_size: int = Field(default=10, ge=1, le=10_000, description="Server-side queue per item.")
    deadband: Deadband | None = Field(default=None, description="Default deadband for numbers.")
    keepalive_s: float = Field(
        default=5.0, ge=0.5, le=600, description="How often the session is checked when idle."
    )
    max_nodes_per_read: int = Field(
        default=500, ge=1, le=100_000, description="Nodes per Read call (server limits)."
    )
    max_buffered_changes: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="Subscription changes kept between hand-overs; beyond that the oldest are "
        "dropped and counted.",
    )
    security: OpcUaSecurity = Field(default_factory=OpcUaSecurity)
    user: OpcUaUser = Field(default_factory=OpcUaUser, description="Anonymous when empty.")
    tags: list[OpcUaTag] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _unique_tag_names(cls, tags: list[OpcUaTag]) -> list[OpcUaTag]:
        _reject_duplicates((t.name for t in tags), "tag name")
        return tags

    @property
    def tag_names(self) -> set[str]:
        return {t.name for t in self.tags}

    def collect_of(self, tag: OpcUaTag) -> OpcUaCollect:
        return tag.collect or self.collect

    def secret_files(self) -> list[SecretFile]:
        sec, user = self.security, self.user
        return [
            SecretFile(("security", "certificate_file"), sec.certificate_file, FileKind.FILE),
            SecretFile(("security", "private_key_file"), sec.private_key_file, FileKind.SECRET),
            SecretFile(
                ("security", "server_certificate_file"),
                sec.server_certificate_file,
                FileKind.FILE,
            ),
            SecretFile(
                ("security", "trusted_certificates_dir"),
                sec.trusted_certificates_dir,
                FileKind.FOLDER,
            ),
            SecretFile(("user", "password_file"), user.password_file, FileKind.SECRET),
            SecretFile(("user", "certificate_file"), user.certificate_file, FileKind.FILE),
            SecretFile(("user", "private_key_file"), user.private_key_file, FileKind.SECRET),
        ]

    def secret_envs(self) -> list[SecretEnv]:
        return [SecretEnv(("user", "password_env"), self.user.password_env)]
