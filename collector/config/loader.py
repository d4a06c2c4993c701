"""Loading a config file: YAML with line numbers, CSV register maps and the machine's secrets.

``load_config(path)`` parses the YAML, validates the whole tree and either returns a frozen
:class:`~collector.config.model.Config` or raises :class:`~collector.errors.ConfigError` whose
problems read ``FILE:LINE: field.path: what is wrong and what is allowed``. Unknown keys are
rejected. Nothing here touches the network.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from collector.config.base import TOPIC_LEVEL_PATTERN
from collector.config.model import Config, FieldError
from collector.devices import NAME_PATTERN, FieldPath, FileKind, dotted
from collector.errors import ConfigError
from drivers.registry import REGISTRY

Path_ = FieldPath


def _line_map(
    node: yaml.Node, path: Path_ = (), out: dict[Path_, int] | None = None
) -> dict[Path_, int]:
    """Map every field path in the YAML document to the 1-based line that gives it."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out)
            # Keep the key's own line for the field itself (errors about the key, e.g. unknown).
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), out)
    return out


def _locate(loc: Sequence[str | int], lines: dict[Path_, int]) -> tuple[str, int]:
    """Turn a pydantic error location into (dotted field path, line).

    An element extends the path when the YAML has it; the last element is shown even when the
    YAML lacks it (a missing field); any other element is a pydantic-internal step, such as the
    tag of a discriminated union, and is skipped.
    """
    path: Path_ = ()
    shown = ""
    for index, element in enumerate(loc):
        candidate = (*path, element)
        step = f"[{element}]" if isinstance(element, int) else f".{element}"
        if candidate in lines:
            path = candidate
            shown += step
        elif index == len(loc) - 1:
            shown += step
    return shown.lstrip(".") or "(top level)", lines.get(path, 1)


def _message(error: Any) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        return "unknown key (not ignored: check its spelling against docs/configuration.md)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        allowed = error["ctx"]["expected_tags"].replace("'", "")
        return f"{error['ctx']['tag']!r} is not a protocol; allowed: {allowed}"
    if kind == "union_tag_not_found":
        return "required field is missing (it selects the kind of device)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        if pattern == NAME_PATTERN:
            return (
                f"{error['input']!r} is not a valid name: use letters, digits, '_', '.', '-' "
                "and start with a letter or digit"
            )
        if pattern == TOPIC_LEVEL_PATTERN:
            return f"{error['input']!r} must not contain '/', '#', '+' or spaces (MQTT topic level)"
    if kind == "value_error" or "input" not in error:
        return msg  # our own validators already name the bad value
    return f"{msg}; got {error['input']!r}"


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Validate a YAML document; raise ConfigError listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{filename}:{line}: (yaml): {exc.problem or exc}"]) from exc
    if node is None or not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: (top level): the file must be a YAML mapping"])
    lines = _line_map(node)
    csv_problems = _load_csv_tags(data, filename, lines)
    if csv_problems:
        raise ConfigError(csv_problems)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = error["loc"]
            if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, error["ctx"]["discriminator"].strip("'"))
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, FieldError):
                loc = (*loc, *cause.loc)
            field, line = _locate(loc, lines)
            problems.append(f"{filename}:{line}: {field}: {_message(error)}")
        raise ConfigError(problems) from None


def _load_csv_tags(data: dict[str, Any], filename: str, lines: dict[Path_, int]) -> list[str]:
    """Add the rows of each device's ``tags_csv`` (a Modbus register map) to its tags (in
    place). Problems read ``MAP.csv:LINE: column: what is wrong``, like the config's own."""
    problems: list[str] = []
    devices = data.get("devices")
    if not isinstance(devices, list):
        return problems
    base = Path(filename).parent
    for index, device in enumerate(devices):
        if not isinstance(device, dict) or not device.get("tags_csv"):
            continue
        protocol = REGISTRY.get(str(device.get("protocol")))
        tag_model = protocol.model.csv_tag_model if protocol is not None else None
        if tag_model is None:
            continue  # validation says that this protocol takes no tags_csv
        columns = tuple(tag_model.model_fields)
        where = f"{filename}:{lines.get(('devices', index, 'tags_csv'), 1)}"
        path = Path(str(device["tags_csv"]))
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text(encoding="utf-8-sig")  # spreadsheets often write a BOM
        except OSError as exc:
            problems.append(
                f"{where}: devices[{index}].tags_csv: cannot read {str(path)!r}: {exc.strerror}"
            )
            continue
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in reader.fieldnames or []]
        unknown = [h for h in header if h not in columns]
        missing = [h for h in ("name", "table", "address") if h not in header]
        if unknown or missing:
            what = []
            if missing:
                what.append(f"missing column(s) {', '.join(missing)}")
            if unknown:
                what.append(f"unknown column(s) {', '.join(unknown)}")
            problems.append(f"{path}:1: (header): {'; '.join(what)}; allowed: {', '.join(columns)}")
            continue
        tags = list(device.get("tags") or [])
        seen: dict[str, int] = {}
        for row in reader:
            cells = {k.strip(): v.strip() for k, v in row.items() if k and v and v.strip()}
            if not cells:
                continue  # a blank line in the sheet
            name = cells.get("name", "")
            if name in seen:
                problems.append(
                    f"{path}:{reader.line_num}: name: duplicate tag name {name!r} "
                    f"(also on line {seen[name]})"
                )
                continue
            seen[name] = reader.line_num
            try:
                tag_model.model_validate(cells)
            except ValidationError as exc:
                for error in exc.errors():
                    column = ".".join(str(x) for x in error["loc"]) or "(row)"
                    problems.append(f"{path}:{reader.line_num}: {column}: {_message(error)}")
                continue
            tags.append(cells)
        device["tags"] = tags
        device["tags_csv"] = str(path)
    return problems


def load_config(path: Path | str) -> Config:
    """Read and validate a config file, and check that its secrets can be resolved."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:0: (file): cannot read: {exc.strerror}"]) from exc
    config = parse_config(text, str(path))
    problems = _environment_problems(config, str(path), text)
    if problems:
        raise ConfigError(problems)
    return config


def _environment_problems(config: Config, filename: str, text: str) -> list[str]:
    """Checks that depend on the machine, not the file: secrets that must exist."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = _line_map(node) if node is not None else {}
    problems: list[str] = []
    for env in config.secret_envs():
        if env.name is not None and env.name not in os.environ:
            problems.append(
                f"{filename}:{lines.get(env.field, 1)}: {dotted(env.field)}: environment "
                f"variable {env.name!r} is not set"
            )
    for file in config.secret_files():
        if file.path is None:
            continue
        line = lines.get(file.field, 1)
        if file.kind is FileKind.FOLDER:
            if not file.path.is_dir():
                problems.append(
                    f"{filename}:{line}: {dotted(file.field)}: {str(file.path)!r} is not a folder"
                )
        elif not os.access(file.path, os.R_OK):
            problems.append(
                f"{filename}:{line}: {dotted(file.field)}: "
                f"file {str(file.path)!r} does not exist or is not readable"
            )
    return problems
