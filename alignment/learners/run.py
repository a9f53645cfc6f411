"""The common run frame: from a validated recipe to a finished run folder (one training run).

A run folder holds: `config.yaml` (the resolved recipe), `metrics.jsonl` (one line per logged step: every
objective's mean reward, the composite reward, weights, KL, loss, step time), `tensorboard/`, and atomic
`checkpoint-N/` folders (adapter or weights, optimizer, scheduler, RNG and trainer state, composer state).
"""

from __future__ import annotations

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
from alignment.learners.trainer_setup import grpo_setup, preference_setup
from alignment.recipes.recipe import PREFERENCE_ALGORITHMS, Recipe
from rewards.composer import RewardComposer

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


def prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool) -> Path | None:
    """Check the run folder and return the checkpoint to resume from (None = start fresh).

    Refuses to start a fresh run in a folder that already holds one, so nothing of an earlier run is lost.
    """
    has_run = (run_dir / METRICS_FILE).exists() or latest_checkpoint(run_dir) is not None
    if resume:
        if not run_dir.is_dir():
            raise ConfigError(f"--resume: run folder {str(run_dir)!r} does not exist")
        return latest_checkpoint(run_dir)
    if has_run:
        raise ConfigError(
            f"output_dir: {str(run_dir)!r} already holds a run; pass --resume to continue it or choose another "
            "output_dir"
        )
    return None


def _metrics_callback(writer: MetricsWriter, composer: RewardComposer | None) -> Any:
    from transformers import TrainerCallback

    class MetricsJSONLCallback(TrainerCallback):
        """Writes every logged step to metrics.jsonl (main process only) with the step's wall time."""

        def __init__(self) -> None:
            self._step_start: float | None = None
            self._step_seconds: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._step_start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._step_start is not None:
                self._step_seconds = time.perf_counter() - self._step_start

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            record: dict[str, Any] = {"step": int(state.global_step)}
            record.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
            if composer is not None:
                record["objectives"] = {name: logs.get(f"rewards/{name}/mean") for name in composer.names}
                record["weights"] = {name: logs.get(f"weights/{name}") for name in composer.names}
                record["composite_reward"] = logs.get("reward/composite")
            record["step_time"] = self._step_seconds
            record.setdefault("kl", None)  # TRL computes KL to the reference only when beta > 0
            writer.write(record)

    return MetricsJSONLCallback()


def open_run(recipe: Recipe, resume: bool) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None), checked before anything is written (see
    `prepare_run_dir`); also applies `train.torch_threads`."""
    rank = world_info()[0]
    run_dir = resolve_run_dir(recipe)
    resume_from = (
        prepare_run_dir(run_dir, recipe, resume) if rank == 0 else (latest_checkpoint(run_dir) if resume else None)
    )
    if recipe.train.torch_threads:
        import torch

        torch.set_num_threads(recipe.train.torch_threads)
    return run_dir, resume_from


def run_training(recipe: Recipe, resume: bool = False) -> RunResult:
    """Train the recipe once (GRPO on the composer, or DPO / RPO / SparsePO on preference pairs) and return where
    the results are. Raises ConfigError/DataError before anything is written when the input is bad. Iterative
    rounds go through `alignment.learners.train.train`, which calls this once per round."""
    rank, world_size = world_info()
    run_dir, resume_from = open_run(recipe, resume)
    if recipe.algorithm in PREFERENCE_ALGORITHMS:
        # unset beta / rpo_eta take the authors' values; config.yaml shows the values used
        recipe = replace(recipe, preference=recipe.preference.resolved(recipe.algorithm))
        setup = preference_setup(recipe, run_dir, world_size)
    else:
        setup = grpo_setup(recipe, run_dir, world_size)
    writer = MetricsWriter(run_dir / METRICS_FILE)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
        atomic_write_text(run_dir / CONFIG_FILE, config_text)
        for name, content in setup.run_files.items():
            atomic_write_json(run_dir / name, content)
        if resume:
            writer.truncate_after(checkpoint_step(resume_from) if resume_from is not None else 0)
    # transformers' TensorBoard callback reads its folder from the environment when the trainer is built: point
    # it at this run (several runs can share one process: sweeps, tests) and put the previous value back after.
    previous_tb_dir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    try:
        trainer = setup.build([_metrics_callback(writer, setup.composer)])
        if resume_from is not None:
            trainer.restore_extra_checkpoint_state(resume_from)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
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
