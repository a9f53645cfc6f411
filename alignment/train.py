"""From a validated recipe to a finished run folder.

A run folder holds: `config.yaml` (the resolved recipe), `metrics.jsonl` (one line per logged step: every
objective's mean reward, the composite reward, weights, KL, loss, step time), `tensorboard/`, and atomic
`checkpoint-N/` folders (adapter or weights, optimizer, scheduler, RNG and trainer state, composer state).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alignment.checkpointing import STAGING_DIR, checkpoint_step, latest_checkpoint
from alignment.config import PREFERENCE_ALGORITHMS, Recipe, RewardsConfig
from alignment.errors import ConfigError
from alignment.io import MetricsWriter, atomic_write_json, atomic_write_text
from rewards.composer import Objective, RewardComposer
from rewards.errors import RewardConfigError
from rewards.masking import LengthCondition
from rewards.registry import build_component
from rewards.weighting import build_weighting

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


@dataclass
class RunResult:
    """Where a finished run left its results."""

    run_dir: Path
    final_checkpoint: Path | None
    steps: int


def world_info() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (1 process when not launched)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build_composer(recipe: Recipe) -> RewardComposer:
    """The recipe's reward composer; bad component names or arguments raise ConfigError."""
    return build_composer_from(recipe.rewards)


def build_composer_from(rewards: RewardsConfig) -> RewardComposer:
    """A composer from a recipe's `rewards` section; bad names, arguments, masks or weighting options raise
    ConfigError naming the field."""
    objectives, masks = [], {}
    for i, objective in enumerate(rewards.objectives):
        where = f"rewards.objectives[{i}] ({objective.name})"
        try:
            component = build_component(objective.name, objective.component, objective.args, where)
        except RewardConfigError as err:  # build_component names `where` itself
            raise ConfigError(str(err)) from None
        if objective.length_condition is not None:
            try:
                masks[objective.name] = LengthCondition.from_dict(objective.length_condition)
            except RewardConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            except TypeError as err:
                raise ConfigError(f"{where}.length_condition: {err}") from None
        objectives.append(Objective(objective.name, component, timeout=objective.timeout))
    names = [o.name for o in rewards.objectives]
    options = dict(rewards.weighting.options)
    options.setdefault("weights", [o.weight for o in rewards.objectives])
    try:
        weighting = build_weighting(rewards.weighting.strategy, len(names), names, **options)
        return RewardComposer(
            objectives, weighting, rewards.normalization, masks=masks or None, timeout=rewards.timeout
        )
    except RewardConfigError as err:
        raise ConfigError(f"rewards.{err}" if str(err).startswith("weighting") else f"rewards: {err}") from None


def resolve_run_dir(recipe: Recipe) -> Path:
    """The run folder: the recipe's output_dir, else runs/<recipe name>-<run id or timestamp>."""
    if recipe.output_dir:
        return Path(recipe.output_dir)
    stem = Path(recipe.source).stem if recipe.source else recipe.algorithm
    run_id = os.environ.get("ALIGN_RUN_ID")
    if run_id is None:
        if world_info()[1] > 1:
            raise ConfigError(
                "output_dir: a multi-process run needs output_dir set (or ALIGN_RUN_ID, which launch.sh sets) "
                "so that every process writes to the same folder"
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


def _load_model_and_tokenizer(recipe: Recipe) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(recipe.model.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path: {str(path)!r} is not a model directory (no config.json)")
    if recipe.model.trust_remote_code:
        import warnings

        warnings.warn("model.trust_remote_code is on: the model folder's Python code will run", stacklevel=2)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[recipe.model.dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=recipe.model.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(  # safetensors only: a pickled .bin is never unpickled
            str(path),
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=recipe.model.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.path: cannot load {str(path)!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if recipe.model.adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, recipe.model.adapter, is_trainable=True)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"model.adapter: cannot load {recipe.model.adapter!r}: {str(err).splitlines()[0]}"
            ) from None
    return model, tokenizer


def _peft_config(recipe: Recipe, model: Any) -> Any:
    if not recipe.peft.enabled or recipe.model.adapter is not None:
        return None  # no adapter, or the one in model.adapter is trained further
    from peft import LoraConfig

    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in recipe.peft.target_modules if m not in leaf_names]
    if missing:
        linear = sorted(n for n in leaf_names if n.endswith("proj") or n in ("lm_head", "fc1", "fc2"))
        raise ConfigError(f"peft.target_modules: {missing} not in the model; candidates: {', '.join(linear)}")
    return LoraConfig(
        r=recipe.peft.r,
        lora_alpha=recipe.peft.alpha,
        lora_dropout=recipe.peft.dropout,
        target_modules=list(recipe.peft.target_modules),
        task_type="CAUSAL_LM",
    )


def _distributed_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Extra TrainingArguments for DeepSpeed on machines without a GPU.

    transformers hands DeepSpeed runs to accelerate without a backend, and on a CPU-only machine accelerate
    then counts one process although DeepSpeed has started several (so batch sizes and gathers would be
    wrong). Setting up accelerate's state first with the gloo backend, and telling TrainingArguments to use
    it, gives every process the right world size.
    """
    import torch

    if recipe.train.deepspeed is None or torch.cuda.is_available():
        return {}
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}


def _zero_stage(path: str) -> int:
    """The ZeRO stage of a DeepSpeed JSON config (0 when absent); ConfigError when the file is not JSON."""
    import json

    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"train.deepspeed: {path!r} is not a readable JSON file ({err})") from None
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _per_device_batch(total: int, what: str, world_size: int, accumulation: int) -> int:
    """Per-process micro-batch of `total` items per optimiser step; ConfigError when it does not divide evenly."""
    if total % (world_size * accumulation) != 0:
        raise ConfigError(
            f"train: {what} = {total} per step must divide evenly over {world_size} processes x {accumulation} "
            "accumulation steps"
        )
    return total // (world_size * accumulation)


def _shared_trainer_args(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
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
        **_distributed_kwargs(recipe),
    }


def _grpo_args(recipe: Recipe, run_dir: Path, world_size: int) -> Any:
    from trl import GRPOConfig

    t = recipe.train
    per_device = _per_device_batch(
        t.prompts_per_step * t.num_generations,
        "prompts_per_step x num_generations completions",
        world_size,
        t.gradient_accumulation_steps,
    )
    if recipe.rewards.weighting.strategy == "gradient" and t.deepspeed is not None:
        stage = _zero_stage(t.deepspeed)
        if stage == 3:
            raise ConfigError(
                "rewards.weighting.strategy: gradient weighting needs full per-objective gradients, which ZeRO-3's "
                "partitioned parameters do not give; use configs/zero2.json"
            )
    return GRPOConfig(
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
        **_shared_trainer_args(recipe, run_dir),
        log_completions=False,
    )


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


@dataclass
class TrainerSetup:
    """What an algorithm's setup hands the common run frame: a trainer factory (given the callbacks), the
    composer whose objectives the metrics name (None for offline preference learning), and extra JSON files
    to put into the run folder (name -> content)."""

    build: Callable[[list[Any]], Any]
    composer: RewardComposer | None
    run_files: dict[str, Any]


def _grpo_setup(recipe: Recipe, run_dir: Path, world_size: int) -> TrainerSetup:
    from alignment.data import load_prompts

    dataset = load_prompts(recipe.data.train, recipe.data.prompt_column, recipe.data.max_rows)
    composer = build_composer(recipe)
    model, tokenizer = _load_model_and_tokenizer(recipe)
    peft_config = _peft_config(recipe, model)
    args = _grpo_args(recipe, run_dir, world_size)

    from alignment.grpo import ComposedGRPOTrainer
    from rollout.base import RolloutServerError
    from rollout.factory import build_engine
    from rollout.weight_sync import resolve_sync_mode

    # transformers (the learner's own model), vllm (falls back to transformers with a warning when vllm cannot
    # be imported) or a rollout server (rollout.server_url); the last two are synced after every update.
    try:
        resolve_sync_mode(recipe.rollout.weight_sync, uses_peft=recipe.peft.enabled)
    except ValueError as err:
        raise ConfigError(f"rollout.weight_sync: {err}") from None
    try:
        engine = build_engine(
            recipe.rollout,
            model,
            tokenizer,
            model_path=recipe.model.path,
            dtype=recipe.model.dtype,
            peft_rank=recipe.peft.r if recipe.peft.enabled else None,
            seed=recipe.seed,
        )
    except RolloutServerError as err:
        raise ConfigError(f"rollout.server_url: {err}") from None
    except ValueError as err:  # settings the engine cannot run with (e.g. vLLM's sleep mode on CPU)
        raise ConfigError(f"rollout: {err}") from None
    sampling = recipe.rollout.sampling_params()

    def build(callbacks: list[Any]) -> Any:
        trainer = ComposedGRPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            composer=composer,
            engine=engine,
            sampling=sampling,
            keep_checkpoints=recipe.train.save_total_limit,
            callbacks=callbacks,
        )
        if engine.name == "transformers":  # it generates with the trainer's (possibly PEFT-wrapped) model
            engine.model = trainer.model
        return trainer

    return TrainerSetup(build=build, composer=composer, run_files={})


def _preference_args(recipe: Recipe, run_dir: Path, world_size: int) -> Any:
    from trl import DPOConfig

    t, p = recipe.train, recipe.preference
    return DPOConfig(
        per_device_train_batch_size=_per_device_batch(
            t.pairs_per_step, "pairs_per_step", world_size, t.gradient_accumulation_steps
        ),
        beta=p.beta,
        max_length=p.max_length,
        precompute_ref_log_probs=False,
        **_shared_trainer_args(recipe, run_dir),
    )


def _preference_setup(recipe: Recipe, run_dir: Path, world_size: int) -> TrainerSetup:
    from datasets import Dataset

    from alignment.errors import DataError
    from alignment.preference_data import drop_long_prompts, read_preference_rows

    p = recipe.preference
    rows, report = read_preference_rows(
        recipe.data.train, on_bad=p.bad_pairs, hint=" (set preference.bad_pairs: skip to skip such rows)"
    )
    if recipe.data.max_rows is not None:
        rows = rows[: recipe.data.max_rows]
    model, tokenizer = _load_model_and_tokenizer(recipe)
    tokenizer.padding_side = "right"  # TRL's preference collator pads on the right
    rows = drop_long_prompts(rows, tokenizer, p.max_length, report, p.too_long)
    if world_info()[0] == 0:
        print(report.summary(), flush=True)
    try:
        dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])
    except Exception as err:  # noqa: BLE001 - pyarrow type errors
        raise DataError(f"{recipe.data.train}: rows mix standard and conversational formats ({err})") from None
    peft_config = _peft_config(recipe, model)
    # Full fine-tuning needs a frozen reference copy; loading it here keeps TRL from looking the path up. With an
    # adapter (new, or continued from model.adapter) the reference is the model with that adapter disabled or
    # frozen as TRL's "ref" copy.
    from peft import PeftModel

    training_adapter = peft_config is not None or isinstance(model, PeftModel)
    ref_model = None if training_adapter else _load_model_and_tokenizer(recipe)[0]
    args = _preference_args(recipe, run_dir, world_size)

    from alignment.preference import PreferenceTrainer

    def build(callbacks: list[Any]) -> Any:
        return PreferenceTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            algorithm=recipe.algorithm,
            settings=p,
            keep_checkpoints=recipe.train.save_total_limit,
            callbacks=callbacks,
        )

    return TrainerSetup(build=build, composer=None, run_files={"data_report.json": report.to_dict()})


def run_training(recipe: Recipe, resume: bool = False) -> RunResult:
    """Train the recipe (GRPO on the composer, or DPO / RPO / SparsePO on preference pairs) and return where
    the results are. Raises ConfigError/DataError before anything is written when the input is bad."""
    rank, world_size = world_info()
    run_dir = resolve_run_dir(recipe)
    # Everything that can be checked is checked before anything is written.
    resume_from = (
        prepare_run_dir(run_dir, recipe, resume) if rank == 0 else (latest_checkpoint(run_dir) if resume else None)
    )
    if recipe.train.torch_threads:
        import torch

        torch.set_num_threads(recipe.train.torch_threads)
    if recipe.algorithm in PREFERENCE_ALGORITHMS and recipe.iterative.rounds > 0:
        from alignment.iterative import run_iterative

        return run_iterative(recipe, run_dir, resume)
    if recipe.algorithm in PREFERENCE_ALGORITHMS:
        setup = _preference_setup(recipe, run_dir, world_size)
    else:
        setup = _grpo_setup(recipe, run_dir, world_size)
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
