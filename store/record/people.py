"""Who may write to the record, and for which functions: store.yaml's ``people``.

Each person has a name, the functions they act for (Quality, Production, Engineering...) and a
bearer token given as its SHA-256 (``token_sha256``), or in a file or an environment variable
like every other secret (common.config.secret). Only the SHA-256 of a token is kept in
memory; a request's token is hashed and compared with every person's hash in constant time.
Tokens are never logged or shown.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.config import secret

SHA256_HEX = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSource(_Model):
    """A bearer token: exactly one of its SHA-256, a file holding it, an environment variable."""

    token_sha256: str | None = Field(
        default=None,
        pattern=SHA256_HEX,
        description="SHA-256 of the token, lowercase hex (`printf %s TOKEN | sha256sum`).",
    )
    token_file: Path | None = Field(default=None, description="File holding the token.")
    token_env: str | None = Field(default=None, description="Environment variable holding it.")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [self.token_sha256, self.token_file, self.token_env]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of token_sha256, token_file, token_env")
        return self

    def digest(self) -> bytes:
        """The token's SHA-256; OSError or KeyError when its file or variable is missing."""
        if self.token_sha256 is not None:
            return bytes.fromhex(self.token_sha256)
        if self.token_env is not None and self.token_env not in os.environ:
            raise KeyError(self.token_env)
        value = secret(self.token_env, self.token_file)
        assert value is not None  # one source is set (validated)
        text = value.get_secret_value()
        if not text:
            raise ValueError("the token is empty")
        return hashlib.sha256(text.encode()).digest()


class PersonConfig(TokenSource):
    name: str = Field(min_length=1, max_length=200, description="Shown in the record.")
    functions: tuple[str, ...] = Field(
        min_length=1, description="The functions this person acts for, e.g. [Quality]."
    )


def token_problems(
    people: Sequence[PersonConfig], read: TokenSource | None, where: str
) -> list[str]:
    """Why the configured tokens cannot be used (``where`` is ``FILE:LINE``): unreadable
    file, unset variable, empty token, two people with one name or one token."""
    problems: list[str] = []
    seen: dict[bytes, str] = {}
    names: set[str] = set()
    sources: list[tuple[str, TokenSource]] = [(f"people[{i}]", p) for i, p in enumerate(people)]
    if read is not None:
        sources.append(("http.read_token", read))
    for field, source in sources:
        if isinstance(source, PersonConfig):
            if source.name in names:
                problems.append(f"{where}: {field}.name: duplicate person {source.name!r}")
            names.add(source.name)
        try:
            digest = source.digest()
        except OSError as exc:
            problems.append(f"{where}: {field}.token_file: cannot read: {exc.strerror}")
            continue
        except KeyError as exc:
            variable = exc.args[0]
            problems.append(
                f"{where}: {field}.token_env: environment variable {variable} is not set"
            )
            continue
        except ValueError as exc:
            problems.append(f"{where}: {field}: {exc}")
            continue
        if digest in seen:
            problems.append(f"{where}: {field}: the same token as {seen[digest]}")
        seen[digest] = field
    return problems


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    functions: tuple[str, ...]
    digest: bytes


class People:
    """The people of the config, by token hash. Built once when the API is created."""

    def __init__(self, people: Sequence[PersonConfig], read: TokenSource | None = None) -> None:
        self.people = tuple(Person(p.name, p.functions, p.digest()) for p in people)
        self.read_digest = None if read is None else read.digest()

    def find(self, token: str | None) -> Person | None:
        """The person whose token this is, or None. Every hash is compared (constant time
        in the token, and no early exit that would tell which person came close)."""
        if not token:
            return None
        given = hashlib.sha256(token.encode()).digest()
        found = None
        for person in self.people:
            if hmac.compare_digest(given, person.digest):
                found = person
        return found

    def may_read(self, token: str | None) -> bool:
        """Reads are open without a read token; with one, it or any person's token reads."""
        if self.read_digest is None:
            return True
        if not token:
            return False
        given = hashlib.sha256(token.encode()).digest()
        ok = hmac.compare_digest(given, self.read_digest)
        return self.find(token) is not None or ok
