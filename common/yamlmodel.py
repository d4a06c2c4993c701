"""A hardened YAML loader for pydantic models: every config-like file of the project goes here.

``load_yaml_model(path, Model)`` reads a file (size-bounded), decodes it as UTF-8, rejects
control and format characters, composes the YAML with a depth bound, walks the node graph with
a bound on what aliases *add* once expanded (so anchors and aliases cannot blow up: a "billion
laughs" or a recursive anchor is a problem, not a freeze), rejects duplicate keys (YAML would
silently keep the last), and validates the data against the model. Every problem reads
``FILE:LINE: path: problem``, values are shown truncated, and the result is either the model
or one :class:`~common.errors.ConfigError` with all the problems: never a traceback.

Used by the collector's config (collector.config.loader), the store's (store.config) and the
pilot protocol (store.report.protocol). It lives outside collector.config so that the store
can use it without importing the drivers. Pure and thread-safe: the service parses a reloaded
config on a worker thread with it, so the event loop never waits for a parse.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from common.errors import ConfigError
from contract.text import is_control

#: Larger files are refused before parsing. This is the one bound on a document's own size: the
#: pure-Python parser takes about a second per 100 kB, so 2 MiB (about 25,000 tags written out)
#: is already half a minute of parsing; a real config is a few kB, a big line's maybe 200.
MAX_FILE_BYTES = 2 * 1024 * 1024
#: Nesting deeper than this is refused (a real config nests about 6 levels).
MAX_DEPTH = 40
#: Expanding every alias may add at most this many values (nodes) to the ones the document
#: writes out: it bounds what aliases add, not the document's size (that is MAX_FILE_BYTES). A
#: line of 160 identical devices sharing one anchored map of 125 tags adds about 200,000; a
#: million takes about 5 s and 150 MB to validate, far below a freeze.
MAX_ALIAS_ADDED = 1_000_000
#: A value is shown in a message up to this many characters.
SHOWN_CHARS = 60
#: At most this many problems of one kind (characters, duplicates) are listed.
MAX_LISTED = 20

FieldPath = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

# Anything outside printable ASCII and the three whitespace controls YAML allows is checked
# against its Unicode category; most files never get past this fast pre-filter.
_SUSPECT = re.compile(r"[^\t\n\r\x20-\x7e]")


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}... ({size} chars)"


@dataclass
class YamlDocument:
    """A parsed document: its data, and the line of every field path."""

    filename: str
    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line(self, path: Sequence[str | int]) -> int:
        """The line of ``path``, or of its nearest ancestor the file has."""
        key = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key, 1)


def read_text(
    path: Path,
    what: str = "config file",
    max_bytes: int = MAX_FILE_BYTES,
    *,
    cited: str | None = None,
) -> str:
    """A file's text: size-bounded, UTF-8 (a BOM is allowed), no control characters.
    ``cited`` is where another file names this one (``FILE:LINE: field``), for "cannot read"."""
    try:
        with path.open("rb") as file:
            raw = file.read(max_bytes + 1)
    except OSError as exc:
        where = cited or f"{path}:0: (file)"
        raise ConfigError([f"{where}: cannot read {str(path)!r}: {exc.strerror or exc}"]) from None
    if len(raw) > max_bytes:
        raise ConfigError(
            [f"{path}:1: (file): larger than {max_bytes} bytes: too large for a {what}"]
        )
    return decode(raw, str(path), what)


def decode(raw: bytes, filename: str, what: str = "config file") -> str:
    """UTF-8 text without control characters, or ConfigError naming the line and column."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                f"{filename}:{line}: (file): not UTF-8: byte 0x{raw[exc.start]:02X} at column "
                f"{column}; save the {what} as UTF-8 (an editor or a spreadsheet wrote it as "
                "Latin-1 / Windows-1252)"
            ]
        ) from None
    problems = control_problems(text, filename)
    if problems:
        raise ConfigError(problems)
    return text


def control_problems(text: str, filename: str) -> list[str]:
    """One problem per control or format character (at most MAX_LISTED)."""
    problems: list[str] = []
    for match in _SUSPECT.finditer(text):
        char = match.group()
        if not is_control(char):
            continue
        start = match.start()
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        name = unicodedata.name(char, "control character")
        problems.append(
            f"{filename}:{line}: (file): character U+{ord(char):04X} ({name}) at column "
            f"{column} is not allowed (control and format characters can hide text)"
        )
        if len(problems) >= MAX_LISTED:
            problems.append(f"{filename}:{line}: (file): ... and maybe more; stopped listing")
            break
    return problems


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH: in the composer (it recurses: a
    deep document would end in RecursionError) and, for ``[[[[...`` flow collections, already
    in the scanner (it looks ahead over a whole flow collection, in quadratic time)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Walk:
    """The field paths' lines, duplicate keys and cycles, in one walk over the distinct nodes
    (an alias is not walked into: its paths take the alias's line)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[FieldPath, int] = {}
        self.problems: list[str] = []
        self._open: set[int] = set()
        self._done: set[int] = set()

    def walk(self, node: yaml.Node, path: FieldPath) -> bool:
        """False once a cycle is found (the walk stops: the problem is said once)."""
        if id(node) in self._open:
            self.problems.append(
                f"{self.filename}:{node.start_mark.line + 1}: {_dotted(path)}: an alias "
                "refers to a node that contains it (a recursive anchor)"
            )
            return False
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self._done:
            return True
        self._open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is not None and key != "<<":
                    if key in seen and len(self.problems) < MAX_LISTED:
                        self.problems.append(
                            f"{self.filename}:{line}: {_dotted((*path, key))}: duplicate key "
                            f"(also on line {seen[key]}); YAML would silently keep the last"
                        )
                    seen.setdefault(key, line)
                child = (*path, key if key is not None else "?")
                if not self.walk(value_node, child):
                    return False
                self.lines[child] = line  # errors about a field point at its key
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                if not self.walk(item, (*path, index)):
                    return False
        self._open.discard(id(node))
        self._done.add(id(node))
        return True


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` is once every alias is expanded (each distinct node counted
    once per use, computed once: a "billion laughs" costs its few distinct nodes here, not its
    billion). Call it on an acyclic graph only; recursion is bounded by MAX_DEPTH."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded(k, sizes) + _expanded(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded(item, sizes) for item in node.value)
    sizes[id(node)] = size
    return size


def _too_big(node: yaml.Node, filename: str) -> str | None:
    """A problem if expanding the aliases adds more than MAX_ALIAS_ADDED values to the
    document's own (distinct) nodes; a document without aliases is never refused here."""
    sizes: dict[int, int] = {}
    expanded = _expanded(node, sizes)
    if expanded - len(sizes) <= MAX_ALIAS_ADDED:  # sizes holds each distinct node once
        return None
    where, line = "(top level)", node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if sizes[id(value_node)] > MAX_ALIAS_ADDED:
                where, line = str(key_node.value), key_node.start_mark.line + 1
                break
    return (
        f"{filename}:{line}: {where}: anchors and aliases add more than {MAX_ALIAS_ADDED} "
        "values once expanded (an alias bomb?)"
    )


def _dotted(path: Sequence[str | int]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "(top level)"


def parse_yaml(text: str, filename: str, *, empty_ok: bool = False) -> YamlDocument:
    """Compose and construct one YAML mapping, bounded; raise ConfigError on any problem."""
    problems = control_problems(text, filename)
    if problems:
        raise ConfigError(problems)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            if empty_ok:
                return YamlDocument(filename, {})
            raise ConfigError([f"{filename}:1: (top level): the file is empty"])
        walk = _Walk(filename)
        walk.walk(node, ())
        if walk.problems:
            raise ConfigError(walk.problems)
        too_big = _too_big(node, filename)
        if too_big is not None:
            raise ConfigError([too_big])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{filename}:{line}: (yaml): {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:  # a reader or emitter error without a mark
        raise ConfigError([f"{filename}:1: (yaml): {exc}"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: (top level): the file must be a YAML mapping"])
    return YamlDocument(filename, data, walk.lines)


Describe = Callable[[Any], str]


def message(error: Any, docs: str = "the documentation") -> str:
    """One pydantic error in a technician's words, with the bad value shown truncated."""
    kind = error["type"]
    msg = str(error["msg"])
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = error["loc"][-1] if error["loc"] else ""
        hint = KEY_HINTS.get(str(key), "")
        return f"unknown key (not ignored: check its spelling against {docs}){hint}"
    if kind == "missing":
        return "required field is missing"
    msg = msg.removeprefix("Value error, ")
    if kind == "enum" and isinstance(error.get("input"), int | float):
        expected = str(ctx.get("expected", ""))
        if repr(str(error["input"])) in expected or f"'{error['input']}'" in expected:
            number = error["input"]
            return f'{msg}; got the number {number!r}: write it in quotes, e.g. "{number}"'
    if kind == "value_error" or "input" not in error:
        return _cut(msg)  # our own validators name the bad value
    return _cut(f"{msg}; got {shown(error['input'])}")


#: Unknown keys that are a known near miss: the hint says what was probably meant.
KEY_HINTS = {
    "unit": " (a device's Modbus unit is unit_id; unit is a tag's engineering unit)",
    "slave": " (the Modbus unit is unit_id)",
    "slave_id": " (the Modbus unit is unit_id)",
    "device_id": " (the Modbus unit is unit_id)",
    "interval_ms": " (did you mean poll_interval_ms?)",
    "timeout": " (did you mean timeout_ms?)",
}


def _cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def validation_problems(
    exc: ValidationError,
    doc: YamlDocument,
    *,
    locate: Callable[[Any], tuple[str, int]] | None = None,
    describe: Callable[[Any], str] | None = None,
) -> list[tuple[int, str]]:
    """(line, ``FILE:LINE: path: problem``) for each error of a validation."""
    out: list[tuple[int, str]] = []
    for error in exc.errors():
        if locate is not None:
            where, line = locate(error)
        else:
            where, line = _dotted(error["loc"]), doc.line(error["loc"])
        text = describe(error) if describe is not None else message(error)
        out.append((line, f"{doc.filename}:{line}: {where}: {text}"))
    return out


def validate(model: type[M], doc: YamlDocument, docs: str = "the documentation") -> M:
    """Validate a document against ``model``; all problems at once, in file order."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        found = validation_problems(exc, doc, describe=lambda e: message(e, docs))
        found.sort(key=lambda item: item[0])
        raise ConfigError([text for _, text in found]) from None


def parse_yaml_model(
    text: str,
    model: type[M],
    filename: str,
    *,
    docs: str = "the documentation",
    empty_ok: bool = False,
) -> M:
    """``text`` validated against ``model``, or ConfigError with every problem."""
    return validate(model, parse_yaml(text, filename, empty_ok=empty_ok), docs)


def load_yaml_model(
    path: Path | str,
    model: type[M],
    *,
    what: str = "config file",
    docs: str = "the documentation",
    empty_ok: bool = False,
) -> M:
    """A file validated against ``model``, or ConfigError with every problem."""
    path = Path(path)
    return parse_yaml_model(read_text(path, what), model, str(path), docs=docs, empty_ok=empty_ok)
