"""Atomic writes (a crash while writing leaves the previous file, or no file, never half a file), JSON and CSV, and the
content keys that tell whether inputs or settings changed since a stamp was written."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _file_mode() -> int:
    """Permissions of a newly created file under the process's umask (mkstemp would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    The temporary name keeps the file's suffixes (some writers choose the format by suffix) and starts with '.'
    so that folder listings that look for finished files never see it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (numpy scalars and arrays are converted)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=_json_default)
        f.write("\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
              float_format: str = ".6g") -> None:
    """Write ``rows`` (one dict a row, keys among ``columns``) as CSV atomically: floats with ``float_format``,
    None as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else format(v, float_format) if isinstance(v, float) else v
                         for k, v in row.items()})
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def json_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as JSON with sorted keys (values JSON cannot hold as their ``str``): a key that
    changes exactly when the settings ``obj`` do."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stat_digest(files: Iterable[tuple[str, str | os.PathLike]], prefix: str = "") -> str:
    """SHA-256 (hex) of ``prefix`` and of the line ``name:size:mtime_ns`` of each ``(name, path)`` in turn: a key that
    changes when a file is added, removed, renamed, resized or touched, without reading the files."""
    h = hashlib.sha256(prefix.encode())
    for name, path in files:
        st = os.stat(path)
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the contents of ``src`` to ``dst`` through :func:`atomic_path`."""
    import shutil

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before any work is done, that ``path`` is or can become a folder to write into; creates nothing.

    Raises ValueError naming the path when it exists and is not a folder, when the nearest existing parent is a
    file (so no folder can be made there), or when the folder that would be written into is not writable.
    Returns ``path`` (user-expanded).
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{path}: the {what} exists and is not a folder; give a folder (it is created if missing)")
    existing = next(a for a in (p.absolute(), *p.absolute().parents) if a.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: the {what} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: the {what} cannot be written: no write permission in {existing}")
    return p
