"""Atomic checkpoints: each one is written into a staging folder and renamed into place when complete.

A checkpoint folder `checkpoint-N` exists only once everything in it (adapter or weights, optimizer,
scheduler, RNG states, trainer state, composer state) has been written; it carries a `COMPLETE` marker.
A killed run leaves at most a staging folder, which resume ignores and the next save replaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from alignment.io import atomic_write_json, fsync_dir

STAGING_DIR = ".staging"
COMPLETE_MARKER = "COMPLETE"
EXTRA_STATE_FILE = "composer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (folders without the marker are skipped)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


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

    def restore_extra_checkpoint_state(self, checkpoint: str | Path) -> None:
        """Load what `extra_checkpoint_state` saved into `checkpoint` (call before `train(resume_from_checkpoint)`)."""
        extra = Path(checkpoint) / EXTRA_STATE_FILE
        if extra.is_file():
            self.load_extra_checkpoint_state(json.loads(extra.read_text(encoding="utf-8")))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = run_dir / STAGING_DIR
        staged = staging_root / name
        if self.args.should_save and staged.exists():
            shutil.rmtree(staged)  # a torn leftover of a killed run
        self.accelerator.wait_for_everyone()
        final_output_dir = self.args.output_dir
        self.args.output_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self.args.output_dir = final_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            extra = self.extra_checkpoint_state()
            if extra is not None:
                atomic_write_json(staged / EXTRA_STATE_FILE, extra)
            files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
            atomic_write_json(staged / COMPLETE_MARKER, {"step": self.state.global_step, "files": files})
            final = run_dir / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staged, final)
            fsync_dir(run_dir)
            self._rotate_complete_checkpoints(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate_complete_checkpoints(self, run_dir: Path) -> None:
        limit = self.keep_checkpoints
        if not limit:
            return
        checkpoints = complete_checkpoints(run_dir)
        for old in checkpoints[: max(0, len(checkpoints) - limit)]:
            shutil.rmtree(old, ignore_errors=True)
