"""LaunchDarkly flag files: parse JSON/YAML files into flag and segment dicts (ld-protocol §9.1).

Safe in any process: the supervisor's file source and a worker's in-process file mode both call
:func:`load_files`. No threads, no watching; callers decide when to reload.

The format is ldclient's: up to three top-level maps, ``flags`` (full flag JSON), ``flagValues``
(``key: value`` shorthand) and ``segments``. Several files merge into one data set; a key that
appears twice (in any file, including a ``flags``/``flagValues`` clash) fails the whole load, so
the caller keeps its previous data.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterable, List, Tuple

from shmflags.errors import DataError
from shmflags.model import validate_flag, validate_segment

#: Largest flag file read; LaunchDarkly payloads reach tens of MB, a flag file should not.
MAX_FILE_BYTES = 64 * 1024 * 1024

Items = Dict[str, Dict[str, Any]]

log = logging.getLogger(__name__)


def load_files(paths: Iterable[str]) -> Tuple[Items, Items]:
    """Read and merge flag files.

    :param paths: file paths, JSON or YAML (YAML also accepts JSON).
    :returns: ``(flags, segments)``, each ``{key: item}`` as LD JSON dicts.
    :raises DataError: when a file cannot be read or parsed, has the wrong shape, or a key
        appears more than once; the message names the file.
    """
    flags: Items = {}
    segments: Items = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise DataError(f"{path}: cannot read flag file: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise DataError(f"{path}: flag file larger than {MAX_FILE_BYTES} bytes")
        merge(parse(raw, path), flags, segments, path)
    return flags, segments


def parse(raw: bytes, path: str = "<data>") -> Dict[str, Any]:
    """Parse one file's bytes (JSON first, then YAML) into its top-level map.

    :raises DataError: on a syntax error or a top level that is not a map.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    data: Any
    if _looks_like_json(path, text):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path}: invalid JSON: {exc}") from None
    else:
        data = _parse_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a map with flags/flagValues/segments")
    return data


def merge(data: Dict[str, Any], flags: Items, segments: Items, path: str = "<data>") -> None:
    """Add one parsed file's items to ``flags`` and ``segments`` in place.

    Items get ``version: 1`` when they lack a version, and ``key`` from the map key when they
    lack one. Unknown top-level keys are ignored, as ldclient does.

    :raises DataError: on a wrongly shaped section or item, or a duplicate key.
    """
    for key, item in _section(data, "flags", path).items():
        _add(flags, "flags", _item(key, item, path, "flags"), path)
    for key, value in _section(data, "flagValues", path).items():
        _add(flags, "flags", flag_with_value(str(key), value), path)
    for key, item in _section(data, "segments", path).items():
        _add(segments, "segments", _item(key, item, path, "segments"), path)


def flag_with_value(key: str, value: Any) -> Dict[str, Any]:
    """The flag a ``flagValues`` entry stands for: on, one variation, served to everyone."""
    return {"key": key, "version": 1, "on": True, "fallthrough": {"variation": 0},
            "variations": [value]}


def _looks_like_json(path: str, text: str) -> bool:
    if path.lower().endswith(".json"):
        return True
    if path.lower().endswith((".yaml", ".yml")):
        return False
    return text.lstrip().startswith(("{", "["))


def _parse_yaml(text: str, path: str) -> Any:
    import yaml  # imported on use: workers that never read files do not pay for it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: invalid YAML: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _section(data: Dict[str, Any], name: str, path: str) -> Dict[Any, Any]:
    section = data.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise DataError(f"{path}: '{name}' must be a map, got {type(section).__name__}")
    return section


def _item(key: Any, item: Any, path: str, kind: str) -> Dict[str, Any]:
    if not isinstance(item, dict):
        raise DataError(f"{path}: {kind} '{key}' must be a map, got {type(item).__name__}")
    odd = [k for k in item if not isinstance(k, str)]
    if odd:
        # YAML 1.1 reads an unquoted `on:` as the boolean True. JSON has only string keys and
        # ldclient ignores such keys (the flag is then off), so drop them, but say why.
        log.warning("%s: %s '%s': ignoring non-string field names %r (quote \"on\" in YAML)",
                    path, kind, key, odd)
    item = {k: v for k, v in item.items() if isinstance(k, str)}
    item.setdefault("key", str(key))
    if not isinstance(item["key"], str) or not item["key"]:
        raise DataError(f"{path}: {kind} '{key}' has no valid key")
    if item["key"] != str(key):
        raise DataError(f"{path}: {kind} '{key}' has key '{item['key']}'; they must match")
    item.setdefault("version", 1)
    version = item["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise DataError(f"{path}: {kind} '{key}' version must be an integer, got {version!r}")
    # What ldclient's store refuses (a wrong JSON type), ldclient's file source refuses too.
    try:
        (validate_flag if kind == "flags" else validate_segment)(item)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return item


def _add(items: Items, kind: str, item: Dict[str, Any], path: str) -> None:
    key = item["key"]
    if key in items:
        raise DataError(f'{path}: in {kind}, key "{key}" was used more than once')
    items[key] = item


def file_signature(paths: List[str]) -> Tuple[Any, ...]:
    """What changes when any of ``paths`` is edited or replaced (mtime, inode, size, device).

    A missing file contributes ``None``, so creation and deletion count as changes too.
    """
    sig: List[Any] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            sig.append(None)
        else:
            sig.append((st.st_mtime_ns, st.st_ino, st.st_size, st.st_dev, st.st_ctime_ns))
    return tuple(sig)
