"""Loading a config file: YAML with line numbers, CSV register maps and the machine's secrets.

``load_config(path)`` parses the YAML, validates the whole tree and either returns a frozen
:class:`~collector.config.model.Config` or raises :class:`~common.errors.ConfigError` whose
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

from pydantic import BaseModel, TypeAdapter, ValidationError

from collector.config.base import TOPIC_LEVEL_PATTERN, HealthConfig
from collector.config.model import (
    Config,
    DeviceConfig,
    FieldError,
    FieldErrors,
    reference_problems,
)
from collector.config.stations import StationConfig
from common.config import NAME_PATTERN, FieldPath, FileKind, dotted
from common.errors import ConfigError
from common.yamlmodel import message, parse_yaml, read_text, shown
from drivers.base import DeviceBase
from drivers.registry import REGISTRY

Path_ = FieldPath


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
    if kind == "union_tag_invalid":
        allowed = error["ctx"]["expected_tags"].replace("'", "")
        return f"{shown(error['ctx']['tag'])} is not a protocol; allowed: {allowed}"
    if kind == "union_tag_not_found":
        return "required field is missing (it selects the kind of device)"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        if pattern == NAME_PATTERN:
            return (
                f"{shown(error['input'])} is not a valid name: use letters, digits, '_', '.', "
                "'-' and start with a letter or digit"
            )
        if pattern == TOPIC_LEVEL_PATTERN:
            return (
                f"{shown(error['input'])} must not contain '/', '#', '+' or spaces "
                "(MQTT topic level)"
            )
    return message(error, "docs/configuration.md")


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Validate a YAML document; raise ConfigError listing every problem (the YAML's, the
    register maps', the schema's and the cross-references', in one pass)."""
    return _parse(text, filename)[0]


def _parse(text: str, filename: str) -> tuple[Config, dict[Path_, int]]:
    doc = parse_yaml(text, filename)
    data, lines = doc.data, doc.lines
    problems = _load_csv_tags(data, filename, lines)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        found = [p for error in errors for p in _problems(error, filename, lines)]
        if not any(error["loc"] == () for error in errors):
            # The schema failed, so Config's cross-section checks did not run: run them on
            # the parts that did validate, so that one pass shows every problem.
            found += _partial_references(data, filename, lines)
        found.sort(key=lambda item: item[0])
        raise ConfigError(problems + [text for _, text in found]) from None
    if problems:
        raise ConfigError(problems)
    return config, lines


def _problems(error: Any, filename: str, lines: dict[Path_, int]) -> list[tuple[int, str]]:
    loc = error["loc"]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, error["ctx"]["discriminator"].strip("'"))
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, FieldErrors):
        out = []
        for one in cause.problems:
            field, line = _locate((*loc, *one.loc) if isinstance(one, FieldError) else loc, lines)
            out.append((line, f"{filename}:{line}: {field}: {one}"))
        return out
    if isinstance(cause, FieldError):
        loc = (*loc, *cause.loc)
    field, line = _locate(loc, lines)
    return [(line, f"{filename}:{line}: {field}: {_message(error)}")]


def _partial_references(
    data: dict[str, Any], filename: str, lines: dict[Path_, int]
) -> list[tuple[int, str]]:
    stations: list[tuple[int, StationConfig]] = []
    devices: list[tuple[int, DeviceBase]] = []
    invalid: set[str] = set()
    invalid_stations: set[str] = set()
    raw_stations = data.get("stations")
    for index, raw in enumerate(raw_stations if isinstance(raw_stations, list) else []):
        try:
            stations.append((index, StationConfig.model_validate(raw)))
        except ValidationError:
            if isinstance(raw, dict):
                invalid_stations.add(str(raw.get("name")))
    raw_devices = data.get("devices")
    adapter: TypeAdapter[DeviceBase] = TypeAdapter(DeviceConfig)
    for index, raw in enumerate(raw_devices if isinstance(raw_devices, list) else []):
        try:
            devices.append((index, adapter.validate_python(raw)))
        except ValidationError:
            if isinstance(raw, dict):
                invalid.add(str(raw.get("name")))
    try:
        unit_api = HealthConfig.model_validate(data.get("health") or {}).unit_api_enabled
    except ValidationError:
        unit_api = True  # its own problem is reported; do not add a guess
    out = []
    for problem in reference_problems(
        stations, devices, unit_api=unit_api, other_devices=invalid, other_stations=invalid_stations
    ):
        loc = problem.loc if isinstance(problem, FieldError) else ()
        field, line = _locate(loc, lines)
        out.append((line, f"{filename}:{line}: {field}: {problem}"))
    return out


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
        path = Path(str(device["tags_csv"]))
        path = path if path.is_absolute() else base / path
        try:
            where = f"{filename}:{lines.get(('devices', index, 'tags_csv'), 1)}"
            cited = f"{where}: devices[{index}].tags_csv"
            # A BOM (spreadsheets write one) is fine; Windows-1252 is said as such.
            text = read_text(path, "register map", cited=cited)
        except ConfigError as exc:
            problems += exc.problems
            continue
        existing = device.get("tags")
        if existing is not None and not isinstance(existing, list):
            continue  # validation says that tags must be a list: the map has nothing to join
        reader = csv.DictReader(io.StringIO(text))
        try:
            problems += _csv_tags(path, reader, tag_model, device)
        except csv.Error as exc:
            # A cell over csv.field_size_limit() (128 KiB), say: the reader cannot go on past
            # it, and no register map has one (is it the right file?).
            problems.append(
                f"{path}:{max(reader.reader.line_num, 1)}: (file): not a CSV register map: {exc}"
            )
    return problems


def _csv_tags(
    path: Path, reader: csv.DictReader[str], tag_model: type[BaseModel], device: dict[str, Any]
) -> list[str]:
    """Join the rows of ``reader`` to ``device``'s tags (in place); the rows' problems.
    Raises csv.Error on a file the reader cannot read on."""
    problems: list[str] = []
    columns = tuple(tag_model.model_fields)
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in columns]
    missing = [h for h in ("name", "table", "address") if h not in header]
    if unknown or missing:
        what = []
        if missing:
            what.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            what.append(f"unknown column(s) {', '.join(unknown)}")
        return [f"{path}:1: (header): {'; '.join(what)}; allowed: {', '.join(columns)}"]
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


def load_config(path: Path | str, *, starting: bool = False) -> Config:
    """Read and validate a config file, and check that its secrets can be resolved.
    ``starting`` (run and check, not a reload): also what the start needs of the machine (the
    buffer's folder), so that ``collector check`` catches what ``run`` would fail on."""
    path = Path(path)
    config, lines = _parse(read_text(path), str(path))
    problems = _environment_problems(config, str(path), lines)
    if starting:
        problems += _buffer_problems(config, str(path), lines)
    if problems:
        raise ConfigError(problems)
    return config


def _buffer_problems(config: Config, filename: str, lines: dict[Path_, int]) -> list[str]:
    buffer = config.buffer.path
    folder = buffer.parent
    where = f"{filename}:{lines.get(('buffer', 'path'), 1)}: buffer.path"
    if not folder.exists():
        existing = next(p for p in folder.parents if p.exists())
        if existing.is_dir():
            return []  # a warning (config_warnings): systemd's StateDirectory= may create it
        return [f"{where}: {str(existing)!r} is a file, so folder {str(folder)!r} can never exist"]
    if not folder.is_dir():
        return [f"{where}: {str(folder)!r} is not a folder"]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [
            f"{where}: folder {str(folder)!r} is not writable by this user (SQLite needs "
            "to create its journal files next to the buffer)"
        ]
    if buffer.is_dir():
        return [f"{where}: {str(buffer)!r} is a folder: give the SQLite file inside it"]
    if buffer.exists() and not buffer.is_file():
        return [
            f"{where}: {str(buffer)!r} is not a regular file (a device or a pipe): the buffer "
            "is an SQLite file, with its journal beside it"
        ]
    if buffer.exists() and not os.access(buffer, os.R_OK | os.W_OK):
        return [f"{where}: file {str(buffer)!r} is not readable and writable by this user"]
    return []


def _environment_problems(config: Config, filename: str, lines: dict[Path_, int]) -> list[str]:
    """Checks that depend on the machine, not the file: secrets that must exist."""
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


def config_warnings(config: Config, path: Path | str) -> list[str]:
    """Likely mistakes in a valid config, as ``FILE:LINE: path: warning: ...`` lines."""
    found: list[tuple[Path_, str]] = [
        (("devices", index, *field), text)
        for index, device in enumerate(config.devices)
        for field, text in device.warnings()
    ]
    folder = config.buffer.path.parent
    if not folder.exists():
        found.insert(
            0,
            (
                ("buffer", "path"),
                f"folder {str(folder)!r} does not exist (yet): run fails unless it is created "
                "(systemd creates /var/lib/collector, the unit's StateDirectory=, at start)",
            ),
        )
    if not found:
        return []
    lines = parse_yaml(read_text(Path(path)), str(path)).lines
    out = []
    for field, text in found:
        shown_field, line = _locate(field, lines)
        out.append(f"{path}:{line}: {shown_field}: warning: {text}")
    return out
