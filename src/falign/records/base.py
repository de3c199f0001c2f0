"""What every record shares: the error a bad file raises, the atomic JSON write, reading a
file's JSON, checking its version and the plain values in it, each checked once."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import FalignError

__all__ = ["RecordError", "new_file_mode", "read_json", "write_json"]


class RecordError(FalignError, ValueError):
    """A file that cannot be read as the record it should hold (a run's ``tracking.json``, a
    comparison's ``compare.json``, a sweep's ``sweep.json``, a reproduction's ``results.json``):
    unreadable, malformed, or of a newer version than this falign reads; one line naming it."""


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (``0o666 & ~umask``):
    what an atomic write (``tempfile.mkstemp``, always 0600) sets, so that run files are as
    readable by the group as any other output."""
    try:  # Linux: read the umask without changing it (os.umask cannot read, only swap)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # swapped back at once; a file made meanwhile is private, not open
    os.umask(mask)
    return 0o666 & ~mask


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Atomic JSON write (temp file + os.replace): a kill never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp makes it private
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str]) -> Any:
    """A file's JSON; :class:`RecordError` (naming the file) when it cannot be read as JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = " ".join(str(err).split())
        raise RecordError(f"{path}: cannot be read as JSON ({reason})") from None


def check_version(d: Any, key: str, newest: int, what: str, where: str) -> int:
    """The version ``d[key]`` of a record's plain form (1 when absent: the form written before
    the record had one), refused when it is not a version or newer than ``newest``."""
    if not isinstance(d, Mapping):
        raise RecordError(f"{where}: holds a JSON {type(d).__name__}, not an object")
    version = d.get(key, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordError(f"{where}: {key} {version!r} is not a version number")
    if version > newest:
        raise RecordError(f"{where}: {what} version {version} is newer than this falign reads "
                          f"(up to {newest}); upgrade falign")
    return version


# -- reading plain values, each checked once ----------------------------------------------------

_MISSING = object()


def get(d: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    if key in d:
        return d[key]
    if default is _MISSING:
        raise RecordError(f"{where}: no '{key}'")
    return default


def number(value: Any, key: str, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}: '{key}' is {value!r}, not a number")
    return float(value)


def integer(value: Any, key: str, where: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{where}: '{key}' is {value!r}, not an integer")
    return value


def text(value: Any, key: str, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{where}: '{key}' is {value!r}, not a string")
    return value


def mapping(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: '{key}' is a {type(value).__name__}, not an object")
    return dict(value)


def sequence(value: Any, key: str, where: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise RecordError(f"{where}: '{key}' is a {type(value).__name__}, not a list")
    return list(value)


def numeric(value: Any, key: str, where: str, *, optional: bool = False) -> int | float | None:
    """A number kept as written (an integer stays one, so that a record writes back the same
    bytes)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}: '{key}' is {value!r}, not a number")
    return value
