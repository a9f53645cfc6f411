"""Atomic checkpoints: each one is written into a staging folder and renamed into place when complete.

A checkpoint folder `checkpoint-N` exists only once everything in it (adapter or weights, optimizer,
scheduler, RNG states, trainer state, composer state) has been written and fsynced; it carries a `COMPLETE`
marker listing its files, and a folder whose marker is missing, unreadable or names a missing file is not a
checkpoint. A killed run leaves at most a staging folder, which resume ignores and the next save replaces.
Old checkpoints lose their marker before they are deleted, so a rotation cut short leaves nothing resumable.
A save the disk refuses (full, quota) stops the run with a one-line `StorageError`; the staged part is
removed and every earlier checkpoint stays as it was. While a trainer with this mixin runs, DeepSpeed's
checkpoint engine loads with ``torch.load(weights_only=True)`` (its own plain classes allow-listed), so
resuming never unpickles arbitrary objects; transformers' Trainer already loads that way.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignment.io import StorageError, atomic_write_json, fsync_dir, os_error_text

STAGING_DIR = ".staging"
COMPLETE_MARKER = "COMPLETE"
EXTRA_STATE_FILE = "composer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# OS errors that mean "this storage cannot take the write" rather than a bug in the code that writes.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def is_complete(folder: str | Path) -> bool:
    """Whether `folder` holds a readable COMPLETE marker and every file the marker lists."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict):
        return False
    files = marker.get("files", [])
    return isinstance(files, list) and all(isinstance(f, str) and (folder / f).is_file() for f in files)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (incomplete folders are skipped, see `is_complete`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder atomically: it is first renamed into the run's staging folder (one rename, so
    a kill leaves either the whole complete checkpoint or none of it in the run folder), then deleted there."""
    trash_root = folder.parent / STAGING_DIR
    trash_root.mkdir(exist_ok=True)
    trash = trash_root / f"deleting-{folder.name}-{os.getpid()}"
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(folder, trash)
    except OSError:
        with contextlib.suppress(OSError):  # cannot rename (odd filesystem): at least never look complete
            (folder / COMPLETE_MARKER).unlink()
        trash = folder
    fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk (the libraries that write checkpoint files do not)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(str(path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _storage_problem(error: BaseException, folder: Path) -> str | None:
    """The OS-level reason a checkpoint write failed, or None when it was not a storage problem.

    An OSError of a storage kind (disk full, quota, read-only, I/O error, permissions) anywhere in the exception
    chain names it. Libraries that wrap the OS error in their own type (torch's zip writer, safetensors) are
    recognised by writing a 1 MiB probe file into `folder` (or the nearest existing parent).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            return os_error_text(current)
        current = current.__cause__ or current.__context__
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    probe = folder / ".write-probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"\0" * (1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        return os_error_text(err)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint folder was written at."""
    match = _CHECKPOINT.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint-N folder")
    return int(match.group(1))


def _deepspeed_safe_globals() -> list[Any]:
    """The plain DeepSpeed classes its ZeRO optimizer checkpoints pickle (a loss scaler, enums, index records)."""
    found = []
    for module_name, names in (
        ("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
        ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
        ("deepspeed.utils.tensor_fragment", ("fragment_address",)),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, name) for name in names if hasattr(module, name)]
    return found


@contextlib.contextmanager
def weights_only_deepspeed_loads() -> Iterator[None]:
    """Within the block, DeepSpeed's torch checkpoint engine loads with ``weights_only=True``.

    DeepSpeed itself loads its optimizer partitions with ``weights_only=False`` (full unpickling); a checkpoint
    folder from someone else could then run code on ``--resume``. Outside a DeepSpeed run this does nothing.
    """
    try:
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    except ImportError:
        yield
        return
    import torch

    original = TorchCheckpointEngine.load

    def load(self: Any, path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    TorchCheckpointEngine.load = load
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original


def set_sampler_epoch(loader: Any, epoch: int) -> int:
    """Call `set_epoch(epoch)` on every sampler and batch sampler under `loader` (not the loader itself); returns
    how many took it.

    The Trainer sets the epoch through accelerate's `DataLoaderShard.set_epoch`, which looks at most three levels
    down. A resumed epoch's loader under several processes nests one level deeper (SkipBatchSampler ->
    BatchSamplerShard -> BatchSampler -> sampler), so a seeded sampler kept the epoch it was built with and a run
    resumed mid-epoch drew another prompt order than the uninterrupted run. This walks the whole chain.
    """
    seen: set[int] = set()
    pending = [getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)]
    count = 0
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if callable(getattr(node, "set_epoch", None)):
            node.set_epoch(epoch)
            count += 1
        pending += [getattr(node, "batch_sampler", None), getattr(node, "sampler", None)]
    return count


class AtomicCheckpointMixin:
    """Mixin for transformers Trainers: atomic checkpoint folders plus extra learner state.

    Subclasses may override `extra_checkpoint_state()` / `load_extra_checkpoint_state()` to save state the
    Trainer does not know about (here: the reward composer's weights and multipliers).
    """

    args: Any
    state: Any
    accelerator: Any
    keep_checkpoints: int | None = None  # newest complete checkpoints to keep (None = all)

    def extra_checkpoint_state(self) -> dict[str, Any] | None:
        return None

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        return None

    def save_extra_checkpoint_files(self, folder: Path, write: bool) -> None:
        """Save learner files (e.g. extra modules' weights) into the staged checkpoint `folder`.

        Called on every process (gathering partitioned parameters is collective); only write when `write`.
        """
        return None

    def load_extra_checkpoint_files(self, checkpoint: Path) -> None:
        """Load what `save_extra_checkpoint_files` wrote into `checkpoint`."""
        return None

    def restore_extra_checkpoint_state(self, checkpoint: str | Path) -> None:
        """Load what `extra_checkpoint_state` saved into `checkpoint` (call before `train(resume_from_checkpoint)`)."""
        extra = Path(checkpoint) / EXTRA_STATE_FILE
        if extra.is_file():
            self.load_extra_checkpoint_state(json.loads(extra.read_text(encoding="utf-8")))
        self.load_extra_checkpoint_files(Path(checkpoint))

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's `train`, with DeepSpeed checkpoints loaded weights-only (see the module docstring)."""
        with weights_only_deepspeed_loads():
            return super().train(*args, **kwargs)  # type: ignore[misc]

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's epoch, with every sampler under its dataloader set to the epoch first (`set_sampler_epoch`):
        a run resumed in the middle of an epoch then draws that epoch's order, as the uninterrupted run did."""
        base = super()._run_epoch  # type: ignore[misc]
        given = inspect.signature(base).bind(*args, **kwargs).arguments
        set_sampler_epoch(given["train_dataloader"], int(given["epoch"]))
        return base(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = run_dir / STAGING_DIR
        staged = staging_root / name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # a torn leftover of a killed run
        self.accelerator.wait_for_everyone()
        try:
            self._write_staged_checkpoint(model, trial, run_dir, staged)
        except Exception as err:
            problem = _storage_problem(err, staging_root) if self.args.should_save else None
            if self.args.should_save:
                shutil.rmtree(staged, ignore_errors=True)  # free what the torn checkpoint took
            if problem is None:
                raise
            previous = latest_checkpoint(run_dir)
            kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
            raise StorageError(
                f"{run_dir / name}: the checkpoint could not be written ({problem}); {kept}. Free space in "
                f"{run_dir} and continue with --resume"
            ) from None
        self.accelerator.wait_for_everyone()

    def _write_staged_checkpoint(self, model: Any, trial: Any, run_dir: Path, staged: Path) -> None:
        """Write the checkpoint into `staged`, fsync it, mark it complete and rename it into `run_dir`."""
        final_output_dir = self.args.output_dir
        self.args.output_dir = str(staged.parent)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self.args.output_dir = final_output_dir
        self.accelerator.wait_for_everyone()
        self.save_extra_checkpoint_files(staged, bool(self.args.should_save))
        if self.args.should_save:
            extra = self.extra_checkpoint_state()
            if extra is not None:
                atomic_write_json(staged / EXTRA_STATE_FILE, extra)
            _fsync_tree(staged)
            files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
            atomic_write_json(staged / COMPLETE_MARKER, {"step": self.state.global_step, "files": files})
            final = run_dir / staged.name
            if final.exists():
                remove_checkpoint(final)
            os.replace(staged, final)
            fsync_dir(run_dir)
            self._rotate_complete_checkpoints(run_dir)

    def _rotate_complete_checkpoints(self, run_dir: Path) -> None:
        limit = self.keep_checkpoints
        if not limit:
            return
        checkpoints = complete_checkpoints(run_dir)
        for old in checkpoints[: max(0, len(checkpoints) - limit)]:
            remove_checkpoint(old)
