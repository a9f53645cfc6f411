"""The common run frame: from a validated recipe to a finished run folder (one training run).

A run folder holds: `align-folder.json` (the marker that makes it a run folder, `alignment.outputs`),
`config.yaml` (the resolved recipe), `metrics.jsonl` (one line per logged step: every objective's mean reward,
the composite reward, weights, KL, loss, step time), `tensorboard/`, and atomic `checkpoint-N/` folders (adapter
or weights, optimizer, scheduler, RNG and trainer state, composer state).

What a run writes, and when: nothing until the trainer has been built and, on `--resume`, the checkpoint has
been loaded into it (model, optimizer, scheduler, composer state); then, as training begins, the marker,
`config.yaml` and the setup's files, and on resume `metrics.jsonl` is cut back to the checkpoint. So a run
refused for any reason (bad input, a folder that is not its own, a checkpoint that does not fit the recipe)
leaves the folder exactly as it was. A fresh run goes only into a missing or empty folder; `--resume` only into
a marked run folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from alignment.errors import ConfigError
from alignment.io import MetricsWriter, atomic_write_json, atomic_write_text
from alignment.learners.checkpointing import STAGING_DIR, checkpoint_step, latest_checkpoint
from alignment.learners.trainer_args import world_info
from alignment.learners.trainer_setup import TrainerSetup, grpo_setup, preference_setup
from alignment.outputs import FolderKind, check_folder, check_outside_runs, claim_folder
from alignment.recipes.recipe import PREFERENCE_ALGORITHMS, Recipe
from rewards.composer import RewardComposer
from rewards.errors import RewardConfigError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


@dataclass
class RunResult:
    """Where a finished run left its results."""

    run_dir: Path
    final_checkpoint: Path | None
    steps: int


def resolve_run_dir(recipe: Recipe) -> Path:
    """The run folder: the recipe's output_dir, else runs/<recipe name>-<run id or timestamp>."""
    if recipe.output_dir:
        return Path(recipe.output_dir)
    stem = Path(recipe.source).stem if recipe.source else recipe.algorithm
    run_id = os.environ.get("ALIGN_RUN_ID")
    if run_id is None:
        if world_info()[1] > 1:
            raise ConfigError(
                "output_dir: a multi-process run needs output_dir set (or ALIGN_RUN_ID, which launch.sh sets on "
                "one node) so that every process writes to the same folder; on several nodes, a folder every node "
                "sees"
            )
        run_id = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stem}-{run_id}"


def run_kind(recipe: Recipe) -> FolderKind:
    """The kind of run folder `recipe` trains into: "iterative" (on-policy preference rounds) or "run"."""
    return "iterative" if recipe.algorithm in PREFERENCE_ALGORITHMS and recipe.iterative.rounds > 0 else "run"


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, inside: Path | None = None) -> Path | None:
    """Check the run folder and return the checkpoint to resume from (None = start fresh). Writes nothing.

    A fresh run needs a missing or empty folder outside every run folder and checkpoint (`inside`: the one run
    folder it may lie in, an iterative run for its rounds); `resume` needs a run folder the project made (its
    marker) of the recipe's kind. Anything else is refused with a ConfigError, so no file of an earlier run or
    of the user is ever replaced.
    """
    check_folder(run_dir, run_kind(recipe), "output_dir", resume=resume)
    if not resume:
        check_outside_runs(run_dir, "output_dir", allowed=inside)
    return latest_checkpoint(run_dir) if resume else None


def write_run_files(run_dir: Path, recipe: Recipe, files: dict[str, Any] | None = None) -> None:
    """Mark `run_dir` as a run folder of the recipe's kind and write its config.yaml (and `files`, name ->
    JSON content). Called once the run is sure to start."""
    claim_folder(run_dir, run_kind(recipe))
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    for name, content in (files or {}).items():
        atomic_write_json(run_dir / name, content)


def _run_folder_callback(
    run_dir: Path, recipe: Recipe, setup: TrainerSetup, resume_step: int | None, started: list[bool]
) -> Any:
    from transformers import TrainerCallback

    class RunFolderCallback(TrainerCallback):
        """Writes the run folder's files once training begins (the checkpoint, if any, is loaded by then) and
        every logged step to metrics.jsonl (main process only) with the step's wall time."""

        def __init__(self) -> None:
            self._step_start: float | None = None
            self._step_seconds: float | None = None
            self.writer: MetricsWriter | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            started.append(True)
            if not state.is_world_process_zero:
                return
            write_run_files(run_dir, recipe, setup.run_files)
            self.writer = MetricsWriter(run_dir / METRICS_FILE)
            if resume_step is not None:
                self.writer.truncate_after(resume_step)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._step_start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._step_start is not None:
                self._step_seconds = time.perf_counter() - self._step_start

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if self.writer is None or not logs or "loss" not in logs:
                return
            composer: RewardComposer | None = setup.composer
            record: dict[str, Any] = {"step": int(state.global_step)}
            record.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
            if composer is not None:
                record["objectives"] = {name: logs.get(f"rewards/{name}/mean") for name in composer.names}
                record["weights"] = {name: logs.get(f"weights/{name}") for name in composer.names}
                record["composite_reward"] = logs.get("reward/composite")
            record["step_time"] = self._step_seconds
            record.setdefault("kl", None)  # TRL computes KL to the reference only when beta > 0
            self.writer.write(record)

    return RunFolderCallback()


def open_run(recipe: Recipe, resume: bool, inside: Path | None = None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None), checked before anything is written (see
    `prepare_run_dir`); also applies `train.torch_threads`."""
    rank = world_info()[0]
    run_dir = resolve_run_dir(recipe)
    if rank == 0:
        resume_from = prepare_run_dir(run_dir, recipe, resume, inside)
    else:
        resume_from = latest_checkpoint(run_dir) if resume else None
    if recipe.train.torch_threads:
        import torch

        torch.set_num_threads(recipe.train.torch_threads)
    return run_dir, resume_from


def end_progress_bars(trainer: Any) -> None:
    """Close the trainer's progress bars (transformers' ProgressCallback), which ends their terminal line, so that
    an error printed next starts on a line of its own instead of after the bar's last "\r" update."""
    for callback in trainer.callback_handler.callbacks:
        for name in ("training_bar", "prediction_bar"):
            bar = getattr(callback, name, None)
            if bar is not None and callable(getattr(bar, "close", None)):
                bar.close()
                setattr(callback, name, None)


def _checkpoint_does_not_fit(checkpoint: Path, err: BaseException) -> ConfigError:
    """The one-line error of a checkpoint that could not be loaded into this recipe's trainer (nothing written)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    detail = lines[0] + (f" {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else "")  # torch: "...:\n\tsize"
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    return ConfigError(
        f"--resume: {checkpoint} does not fit this recipe ({type(err).__name__}: {detail}); the run folder is "
        "unchanged. Resume with the recipe it was trained with (its config.yaml)"
    )


def run_training(recipe: Recipe, resume: bool = False, *, inside: Path | None = None) -> RunResult:
    """Train the recipe once (GRPO on the composer, or DPO / RPO / SparsePO on preference pairs) and return where
    the results are. Raises ConfigError/DataError before anything is written when the input is bad. Iterative
    rounds go through `alignment.learners.train.train`, which calls this once per round (`inside` = the
    iterative run folder that holds the round's run folder)."""
    rank, world_size = world_info()
    run_dir, resume_from = open_run(recipe, resume, inside)
    if recipe.algorithm in PREFERENCE_ALGORITHMS:
        # unset beta / rpo_eta take the authors' values; config.yaml shows the values used
        recipe = replace(recipe, preference=recipe.preference.resolved(recipe.algorithm))
        setup = preference_setup(recipe, run_dir, world_size)
    else:
        setup = grpo_setup(recipe, run_dir, world_size)
    resume_step = (checkpoint_step(resume_from) if resume_from is not None else 0) if resume else None
    started: list[bool] = []
    existed = run_dir.exists()
    # transformers' TensorBoard callback reads its folder from the environment when the trainer is built: point
    # it at this run (several runs can share one process: sweeps, tests) and put the previous value back after.
    previous_tb_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    trainer: Any = None
    try:
        folder_callback = _run_folder_callback(run_dir, recipe, setup, resume_step, started)
        trainer = setup.build([folder_callback])
        # First in line, so that the marker is written before TensorBoard's callback creates its folder.
        trainer.callback_handler.callbacks.remove(folder_callback)
        trainer.callback_handler.callbacks.insert(0, folder_callback)
        if resume_from is not None:
            trainer.restore_extra_checkpoint_state(resume_from)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    except BaseException as err:
        if trainer is not None:
            end_progress_bars(trainer)
        if not started and not existed and rank == 0:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only the empty folder the Trainer made: a refused run leaves nothing behind
        # Before training began, on resume, these come from loading the checkpoint into this recipe's trainer.
        loading_error = isinstance(err, RuntimeError | ValueError | KeyError | RewardConfigError)
        if resume_from is None or started or trainer is None or not loading_error:
            raise
        raise _checkpoint_does_not_fit(resume_from, err) from None
    finally:
        if previous_tb_dir is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous_tb_dir
    trainer.accelerator.wait_for_everyone()
    final = latest_checkpoint(run_dir)
    if rank == 0:
        # Only TRL's model card (README.md) is left in the staging folder once every checkpoint is in place.
        shutil.rmtree(run_dir / STAGING_DIR, ignore_errors=True)
    return RunResult(run_dir=run_dir, final_checkpoint=final, steps=int(trainer.state.global_step))
