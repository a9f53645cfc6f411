"""Where a command may write: folders the project made (marked), new or empty folders, and new files.

A folder is the project's only when the project created it: the first thing written into a new run folder,
iterative run folder, sweep folder or report folder is a marker file, ``align-folder.json``, holding its kind.
Every command that writes checks its destination before it does any work and refuses, in one line and without
changing anything, when the destination

* names a file where a folder is needed, or a folder where a file is needed;
* lies under a file, or under a folder it cannot write into;
* is an existing folder that is neither empty nor a marked folder of the expected kind (files the user owns are
  never replaced); a marked run folder takes a fresh run only with ``--resume``;
* lies inside (or is) a run folder or a checkpoint, marked or not (run folders are written only by their run,
  and by ``align evaluate`` into their ``eval/``; a checkpoint is deleted whole when rotated out), except an
  iterative run's own rounds;
* for output files: already exists, unless the command's ``--overwrite`` is given.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Literal

from alignment.errors import ConfigError
from alignment.io import atomic_write_json

MARKER = "align-folder.json"
MARKER_FORMAT = "align-folder/1"
FolderKind = Literal["run", "iterative", "sweep", "report"]
RUN_KINDS: tuple[FolderKind, ...] = ("run", "iterative")
_A_KIND = {"run": "a run", "iterative": "an iterative run", "sweep": "a sweep", "report": "a report"}
_CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def folder_kind(path: str | Path) -> str | None:
    """The kind written in `path`'s marker ("run", "iterative", "sweep", "report"), or None when it has none."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        return None
    kind = data.get("kind")
    return kind if isinstance(kind, str) else None


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` is a run folder the project made (`align train`, a sweep's run, an iterative run)."""
    return folder_kind(path) in RUN_KINDS


def claim_folder(path: str | Path, kind: FolderKind) -> None:
    """Create `path` (and its parents) if needed and mark it as the project's folder of `kind`.

    Call after `check_folder` accepted it, right before the first file is written. StorageError (one line) when
    the disk refuses."""
    path = Path(path)
    if folder_kind(path) == kind:
        return
    atomic_write_json(
        path / MARKER, {"format": MARKER_FORMAT, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_usable(path: Path, option: str) -> None:
    """ConfigError when the OS cannot even look `path` up (NUL byte, a name or path too long, a symlink loop)."""
    try:
        path.exists()
        path.resolve()
    except (OSError, ValueError, RuntimeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        shown = repr(str(path)) if len(str(path)) <= 80 else repr(str(path)[:77] + "...")
        raise ConfigError(f"{option}: {shown} is not a usable path ({reason})") from None


def check_creatable(path: str | Path, option: str, *, folder: bool) -> None:
    """ConfigError naming `option` when `path` cannot become a folder (`folder`) or a file: not a usable path,
    the wrong kind of thing is already there, a parent is a file, or the nearest existing folder is not
    writable."""
    path = Path(path)
    _check_usable(path, option)
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{option}: {str(path)!r} is a file, not a folder; name a new or empty folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{option}: {str(path)!r} is a folder; name a file")
        target = path if folder else path.parent
    else:
        target = _nearest_existing(path.parent) if path.parent != path else path
    if not target.is_dir():
        raise ConfigError(f"{option}: {str(path)!r} cannot be created: {str(target)!r} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: {str(path)!r} cannot be written: no write permission in {str(target)!r}")


def check_folder(path: str | Path, kind: FolderKind, option: str, *, resume: bool = False) -> None:
    """Accept `path` as the destination folder of a new `kind` folder (or, with `resume`, a marked one to
    continue); ConfigError naming `option` otherwise (see the module docstring). Writes nothing."""
    path = Path(path)
    check_creatable(path, option, folder=True)
    shown = str(path)
    if resume:
        if not path.is_dir():
            raise ConfigError(f"--resume: {shown!r} does not exist; nothing to continue")
        found = folder_kind(path)
        if found != kind:
            what = f"holds {_A_KIND.get(found, found)}" if found else f"is not a folder made by align (no {MARKER})"
            raise ConfigError(f"--resume: {shown!r} {what}, not {_A_KIND[kind]} to continue; nothing was changed")
        return
    if not path.exists() or not any(path.iterdir()):
        return
    found = folder_kind(path)
    if found == kind and kind == "report":
        return  # a report folder is rewritten by the next report
    if found == kind:
        raise ConfigError(
            f"{option}: {shown!r} already holds {_A_KIND[kind]}; pass --resume to continue it or choose another "
            "folder (nothing was changed)"
        )
    what = f"holds {_A_KIND.get(found, found)}" if found else "holds files align did not write"
    raise ConfigError(f"{option}: {shown!r} {what}; choose a new or empty folder (nothing was changed)")


def _looks_like_run(path: Path) -> bool:
    """A run folder by its contents, marked or not (written by an older version, or copied)."""
    if not (path / "config.yaml").is_file():
        return False
    if (path / "metrics.jsonl").exists() or (path / "eval").is_dir():
        return True
    try:
        return any(_CHECKPOINT.match(child.name) for child in path.iterdir())
    except OSError:
        return False


def _is_checkpoint(path: Path) -> bool:
    return path.name == ".staging" or (_CHECKPOINT.match(path.name) is not None and path.is_dir())


def enclosing_run(path: str | Path) -> Path | None:
    """The run folder or checkpoint that `path` is or lies inside (marked run folders, folders that look like
    a run, checkpoint-N and .staging folders), else None."""
    resolved = Path(path).resolve()
    for folder in (resolved, *resolved.parents):
        if not folder.is_dir():
            continue
        if is_run_folder(folder) or _is_checkpoint(folder) or _looks_like_run(folder):
            return folder
    return None


def check_outside_runs(path: str | Path, option: str, *, allowed: str | Path | None = None) -> None:
    """ConfigError when `path` is or lies inside a run folder or a checkpoint (run folders are written only by
    their run; a checkpoint is deleted whole when it is rotated out). `allowed`: the one run folder `path` may
    lie in (an iterative run's rounds are run folders inside it)."""
    _check_usable(Path(path), option)
    run = enclosing_run(path)
    if run is not None and (allowed is None or run != Path(allowed).resolve()):
        what = "checkpoint" if _is_checkpoint(run) else "run folder"
        raise ConfigError(
            f"{option}: {str(path)!r} is inside {what} {str(run)!r}; run folders are written only by their run, so "
            "choose a place outside it (nothing was changed)"
        )


def check_report_folder(path: str | Path, option: str) -> None:
    """A report folder (`align pareto --out`, a sweep's report/): new, empty or an earlier report, outside
    every run folder and checkpoint, writable."""
    check_outside_runs(path, option)
    check_folder(path, "report", option)


def check_output_file(path: str | Path, option: str, *, overwrite: bool = False) -> None:
    """An output file (`align sample --out`, `align eval-rm --out`): creatable, outside every run folder and
    checkpoint, and new unless `overwrite`."""
    path = Path(path)
    check_creatable(path, option, folder=False)
    check_outside_runs(path, option)
    if path.exists() and not overwrite:
        raise ConfigError(f"{option}: {str(path)!r} already exists; pass --overwrite to replace it")
