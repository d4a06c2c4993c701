"""Config primitives the collector's and the store's config models share: names, hosts,
regular expressions, field paths as error messages show them, secrets from files or the
environment, the base model that forbids unknown keys, and the reconnect backoff's fields.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, ClassVar, NamedTuple, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


def _not_an_index(name: str) -> str:
    # Schema-2 messages key values by tag name, and JavaScript (a browser, Node-RED) moves
    # integer-like keys to the front of an object: "17" would silently reorder the tags.
    if re.fullmatch(r"0|[1-9][0-9]*", name):
        raise ValueError(
            f"tag name {name!r} is a whole number, which JSON consumers reorder; give it a "
            f"letter, e.g. 'r{name}'"
        )
    return name


#: A tag's name: a Name that is not a canonical whole number.
TagName = Annotated[Name, AfterValidator(_not_an_index)]


def _host(value: str) -> str:
    if not value.strip() or value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a host: give an IP address or a host name")
    return value


#: A host name or address: not empty, no spaces.
Host = Annotated[str, Field(max_length=253), AfterValidator(_host)]

#: Longest regular expression a config may give (a real one is a line).
MAX_PATTERN_CHARS = 1000


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A config's regular expression, or ValueError saying why not (a huge repeat count, e.g.
    ``a{99999999999}``, raises OverflowError in ``re``: reported, not a traceback)."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"regular expression longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        shown = repr(pattern) if len(pattern) <= 60 else f"{pattern[:60]!r}..."
        raise ValueError(f"{shown} is not a regular expression: {exc}") from None


#: A field's place in the config, e.g. ("devices", 2, "user", "password_file").
FieldPath = tuple[str | int, ...]


def dotted(path: FieldPath) -> str:
    """A field path as the config's error messages show it: ``devices[2].user.password_file``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


class Model(BaseModel):
    """Every config model: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A reconnect backoff's first delay (ms): a model that wants another default than
#: ReconnectBackoff's declares ``reconnect_min_ms: ReconnectMinMs = ...`` again.
ReconnectMinMs = Annotated[int, Field(ge=10, description="First reconnect delay.")]
#: A reconnect backoff's longest delay (ms).
ReconnectMaxMs = Annotated[int, Field(ge=10, description="Longest reconnect delay.")]


class ReconnectBackoff(Model):
    """The backoff of a link that reconnects (a device, the broker): doubling from
    ``reconnect_min_ms`` to ``reconnect_max_ms`` with jitter (common.backoff)."""

    reconnect_min_ms: ReconnectMinMs = 500
    reconnect_max_ms: ReconnectMaxMs = 30_000

    #: False where the enclosing model checks the order itself, to name the fields by their
    #: full path (the store's ``mqtt.reconnect_max_ms``).
    check_reconnect_order: ClassVar[bool] = True

    def reconnect_order_problem(self, prefix: str = "") -> str | None:
        """Why the two delays do not go together (None: they do); ``prefix`` names where."""
        if self.reconnect_max_ms < self.reconnect_min_ms:
            return f"{prefix}reconnect_max_ms must be >= {prefix}reconnect_min_ms"
        return None

    @model_validator(mode="after")
    def _reconnect_order(self) -> Self:
        problem = self.reconnect_order_problem() if self.check_reconnect_order else None
        if problem is not None:
            raise ValueError(problem)
        return self


class FileKind(StrEnum):
    #: Holds a secret (a password, a private key): must not be readable by other users.
    SECRET = "secret"  # noqa: S105 - a kind of file, not a password
    #: A certificate or CA bundle the secure link needs: must be readable.
    FILE = "file"
    #: A folder of trusted certificates: must be a folder.
    FOLDER = "folder"


class SecretFile(NamedTuple):
    """A file (or folder) the config names for a secure link, where it is named."""

    field: FieldPath
    path: Path | None
    kind: FileKind


class SecretEnv(NamedTuple):
    """An environment variable the config names for a secret, where it is named."""

    field: FieldPath
    name: str | None


def secret(env: str | None, file: Path | None) -> SecretStr | None:
    """A secret from its environment variable or file (read at start-up)."""
    if env is not None:
        value = os.environ.get(env)
        return None if value is None else SecretStr(value)
    if file is not None:
        return SecretStr(file.read_text(encoding="utf-8").rstrip("\r\n"))
    return None


def reject_duplicates(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)
