"""TRL TrainingArguments from a recipe: the fields every learner shares (run folder, seed, steps, schedule,
DeepSpeed, logging) and each learner's own (GRPOConfig, DPOConfig)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError
from alignment.recipes.deepspeed_config import read_deepspeed_config
from alignment.recipes.recipe import Recipe


def world_info() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (1 process when not launched)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def distributed_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Extra TrainingArguments for DeepSpeed on machines without a GPU.

    transformers hands DeepSpeed runs to accelerate without a backend, and on a CPU-only machine accelerate
    then counts one process although DeepSpeed has started several (so batch sizes and gathers would be
    wrong). Setting up accelerate's state first with the gloo backend, and telling TrainingArguments to use
    it, gives every process the right world size. The state is set up once per process and reused by every
    later run in it (iterative rounds).
    """
    import torch

    if recipe.train.deepspeed is None or torch.cuda.is_available():
        return {}
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    # A trainer built earlier in this process (the previous iterative round) left accelerate's state holding its
    # DeepSpeed plugin, which a second Accelerator refuses; clear it and keep the process group (PartialState).
    AcceleratorState._reset_state(reset_partial_state=False)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}


def init_process_group(recipe: Recipe) -> None:
    """Start torch.distributed in a launched process before any trainer exists, the way the recipe's trainer
    starts it (accelerate's state: gloo for DeepSpeed on CPU, DeepSpeed's backend on GPU, else accelerate's
    choice), so that the trainers built later reuse the group. Does nothing when it is already up."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    distributed_kwargs(recipe)  # CPU + DeepSpeed
    if dist.is_initialized():
        return
    from accelerate import PartialState

    use_deepspeed = recipe.train.deepspeed is not None
    if use_deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState()
    finally:
        if use_deepspeed:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]


def end_process_group() -> None:
    """Wait for every process of a launched run, then take torch.distributed's default group down.

    Called once a launched command has finished on every rank. A process that exits with gloo's connections still
    open can abort during teardown ("terminate called without an active exception", SIGABRT) when its peer exits
    first; ending the group together avoids that. Does nothing in a single process or when torch.distributed was
    never started (so in-process callers, e.g. tests, keep their state).
    """
    import sys

    dist = sys.modules.get("torch.distributed")
    if world_info()[1] <= 1 or dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()  # every rank is done with the shared segments below
    remove_deepspeed_shm_segment()
    dist.destroy_process_group()


def deepspeed_shm_segment() -> Path | None:
    """This process's segment of DeepSpeed's CPU all-reduce in /dev/shm (None when not launched).

    DeepSpeed's CPU communication op gives every process a ~66 MB shared-memory segment named
    deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{RANK} and never unlinks it, so each launched
    CPU run would leave 66 MB of RAM per process in /dev/shm until the machine restarts.
    """
    addr, port, rank = (os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK"))
    if not (addr and port and rank):
        return None
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def remove_deepspeed_shm_segment() -> None:
    """Unlink this process's DeepSpeed all-reduce segment (`deepspeed_shm_segment`); processes that still map it
    keep it until they exit. Call only once no rank will open it again (after a barrier at the end of a run)."""
    segment = deepspeed_shm_segment()
    if segment is not None:
        with contextlib.suppress(OSError):
            segment.unlink()


def zero_stage(path: str) -> int:
    """The ZeRO stage of a DeepSpeed JSON config (0 when absent); ConfigError when the file is not JSON."""
    return int(read_deepspeed_config(path).get("zero_optimization", {}).get("stage", 0))


def check_deepspeed_agrees(args: Any) -> None:
    """ConfigError when transformers, matching the DeepSpeed config against `args` (TrainingArguments), found a
    value that disagrees (a fixed micro-batch or train_batch_size for this many processes, optimizer settings):
    now, rather than a ValueError when training starts."""
    mismatches = getattr(getattr(args, "hf_deepspeed_config", None), "mismatches", None) or []
    if mismatches:
        found = "; ".join(m.lstrip("- ") for m in mismatches)
        raise ConfigError(f'train.deepspeed: values disagree with the recipe ({found}); set them to "auto"')


def per_device_batch(total: int, what: str, world_size: int, accumulation: int) -> int:
    """Per-process micro-batch of `total` items per optimiser step; ConfigError when it does not divide evenly."""
    if total % (world_size * accumulation) != 0:
        raise ConfigError(
            f"train: {what} = {total} per step must divide evenly over {world_size} processes x {accumulation} "
            "accumulation steps"
        )
    return total // (world_size * accumulation)


def shared_trainer_args(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """TrainingArguments every learner sets the same way from the recipe's `train` and `model` sections."""
    t = recipe.train
    return {
        "output_dir": str(run_dir),
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "max_steps": t.max_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_steps": t.warmup_steps,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_grad_norm": t.max_grad_norm,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": None,  # rotation of complete checkpoints is ours (alignment.checkpointing)
        "report_to": [r for r in t.report_to if r != "none"] or "none",
        "deepspeed": t.deepspeed,
        "gradient_checkpointing": t.gradient_checkpointing,
        "bf16": recipe.model.dtype == "bfloat16",
        "fp16": recipe.model.dtype == "float16",
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
        **distributed_kwargs(recipe),
    }


def grpo_args(recipe: Recipe, run_dir: Path, world_size: int) -> Any:
    """TRL GRPOConfig of the recipe (per-process batch from prompts_per_step x num_generations); ConfigError for
    a batch that does not divide over the processes, or gradient weighting under ZeRO-3."""
    from trl import GRPOConfig

    t = recipe.train
    per_device = per_device_batch(
        t.prompts_per_step * t.num_generations,
        "prompts_per_step x num_generations completions",
        world_size,
        t.gradient_accumulation_steps,
    )
    if recipe.rewards.weighting.strategy == "gradient" and t.deepspeed is not None:
        stage = zero_stage(t.deepspeed)
        if stage == 3:
            raise ConfigError(
                "rewards.weighting.strategy: gradient weighting needs full per-objective gradients, which ZeRO-3's "
                "partitioned parameters do not give; use configs/zero2.json"
            )
    args = GRPOConfig(
        per_device_train_batch_size=per_device,
        num_generations=t.num_generations,
        max_completion_length=recipe.rollout.max_new_tokens,
        temperature=recipe.rollout.temperature,
        top_p=recipe.rollout.top_p,
        top_k=recipe.rollout.top_k,
        beta=t.beta,
        epsilon=t.epsilon,
        epsilon_high=t.epsilon_high,
        loss_type=t.loss_type,
        reward_weights=[o.weight for o in recipe.rewards.objectives],
        **shared_trainer_args(recipe, run_dir),
        log_completions=False,
    )
    check_deepspeed_agrees(args)
    return args


def preference_args(recipe: Recipe, run_dir: Path, world_size: int) -> Any:
    """TRL DPOConfig of the recipe (per-process batch from pairs_per_step)."""
    from trl import DPOConfig

    t, p = recipe.train, recipe.preference
    args = DPOConfig(
        per_device_train_batch_size=per_device_batch(
            t.pairs_per_step, "pairs_per_step", world_size, t.gradient_accumulation_steps
        ),
        beta=p.beta,
        max_length=p.max_length,
        precompute_ref_log_probs=False,
        **shared_trainer_args(recipe, run_dir),
    )
    check_deepspeed_agrees(args)
    return args
