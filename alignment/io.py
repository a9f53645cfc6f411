"""Crash-safe file writing: atomic replace for whole files, fsynced appends for the metrics JSONL.

A write the operating system refuses (disk full, quota, read-only folder) raises `StorageError`, a
`UserInputError` whose one-line message names the file and the OS error, so the CLI stops with that line
instead of a traceback and nothing already on disk is touched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from alignment.errors import UserInputError


class StorageError(UserInputError):
    """A run file could not be written (disk full, quota, permissions); the message names the file and why."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def os_error_text(err: OSError) -> str:
    """One line for an OS error: ``[Errno 28] No space left on device`` (without the file name)."""
    if err.errno is not None and err.strerror:
        return f"[Errno {err.errno}] {err.strerror}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (after a rename) so the rename survives a crash."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and os.replace: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise StorageError(f"{path}: cannot be written ({os_error_text(err)})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            detail = os_error_text(err)
            raise StorageError(f"{path}: cannot be written ({detail}); the previous version is intact") from None
        raise
    fsync_dir(path.parent)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _json_safe(value.item())
    return value


def atomic_write_jsonl(path: str | Path, rows: Any) -> None:
    """Write rows as JSON lines (NaN/inf as null, UTF-8 kept) atomically, like `atomic_write_text`."""
    atomic_write_text(path, "".join(json.dumps(_json_safe(row), ensure_ascii=False) + "\n" for row in rows))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Atomically write `data` as indented JSON (NaN/inf become null)."""
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


class MetricsWriter:
    """Appends one JSON object per line to a metrics file; each line is flushed and fsynced.

    On resume, `truncate_after(step)` drops lines for steps past the checkpoint (and a torn last line), so the
    file has no duplicated or missing steps once the resumed run writes them again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` as one line; StorageError (naming the file and step) when the OS refuses the write.

        A line that could only be written in part is cut off again, so the file keeps only whole lines.
        """
        line = json.dumps(_json_safe(record), sort_keys=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            step = record.get("step", "?")
            raise StorageError(f"{self.path}: cannot append step {step} ({os_error_text(err)})") from None

    def read(self) -> list[dict[str, Any]]:
        """Every complete line as a dict (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_after(self, step: int) -> None:
        """Keep only records with step <= `step` (atomically rewrites the file)."""
        kept = [r for r in self.read() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
