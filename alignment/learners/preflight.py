"""Checks of a training recipe against this machine and its model, run before anything is loaded or written.

`check_before_training(recipe)` refuses, each with one line naming the field:
- `train.deepspeed` without a launcher (DeepSpeed needs the process group its launcher sets up);
- a `train.report_to` backend that is not installed;
- a `model.path` without config.json;
- `rollout.max_new_tokens` (with `rollout.max_prompt_tokens`) that does not fit the model's context, read from the
  model folder's config.json (no weights loaded);
- iterative rounds whose prompts could never make one step's pairs.
Checks that need the data of a single run (prompts or pairs per step against the rows there are) run where the
data is read (`trainer_setup`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError
from alignment.recipes.recipe import PREFERENCE_ALGORITHMS, Recipe

LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# report_to backend -> the packages transformers accepts for it (any one).
REPORT_BACKENDS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def check_launcher(recipe: Recipe) -> None:
    """ConfigError when `train.deepspeed` is set but this process was not started by a launcher."""
    if recipe.train.deepspeed is None:
        return
    missing = [name for name in LAUNCHER_ENV if not os.environ.get(name)]
    if missing:
        source = recipe.source or "RECIPE.yaml"
        raise ConfigError(
            f"train.deepspeed: a DeepSpeed run must be started by its launcher ({', '.join(missing)} not set): "
            f"`deepspeed --num_gpus N --module alignment.cli train {source}` or `bash launch.sh {source} "
            "--num_procs N` (N >= 2); or drop train.deepspeed for a plain single-process run"
        )


def check_report_backends(recipe: Recipe) -> None:
    """ConfigError naming a `train.report_to` backend whose package is not installed."""
    for i, backend in enumerate(recipe.train.report_to):
        packages = REPORT_BACKENDS.get(backend)
        if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ConfigError(
                f"train.report_to[{i}]: {backend!r} is not installed (pip install {packages[0]}); "
                "or report to tensorboard / none"
            )


def model_context_length(model_path: str | Path) -> int | None:
    """The context window a model folder's config.json declares (None when it declares none or is unreadable:
    the model loader then reports the folder)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            for key in CONTEXT_KEYS:
                value = section.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


def check_lengths_fit(recipe: Recipe) -> None:
    """ConfigError when sampling could not fit the model's context: `max_new_tokens` must leave room for a prompt,
    and `max_prompt_tokens + max_new_tokens` must fit. Only recipes that sample (GRPO, iterative rounds)."""
    samples = recipe.algorithm not in PREFERENCE_ALGORITHMS or recipe.iterative.rounds > 0
    if not samples:
        return
    rollout = recipe.rollout
    context = model_context_length(recipe.model.path)
    source = "the model's config.json"
    vllm_limit = rollout.vllm_options.get("max_model_len") if rollout.engine == "vllm" else None
    if isinstance(vllm_limit, int):
        context, source = vllm_limit, "rollout.vllm_options.max_model_len"
    if context is None:
        return
    if rollout.max_new_tokens >= context:
        raise ConfigError(
            f"rollout.max_new_tokens: {rollout.max_new_tokens} new tokens leave no room for a prompt in the model's "
            f"context of {context} tokens ({source}); use at most {context - 1}"
        )
    if rollout.max_prompt_tokens is not None and rollout.max_prompt_tokens + rollout.max_new_tokens > context:
        raise ConfigError(
            f"rollout.max_prompt_tokens: {rollout.max_prompt_tokens} prompt + {rollout.max_new_tokens} new tokens do "
            f"not fit the model's context of {context} tokens ({source}); lower one of them or leave "
            "max_prompt_tokens null (the context minus max_new_tokens)"
        )


def check_model_folder(recipe: Recipe) -> None:
    """ConfigError when `model.path` holds no config.json (the same line the model loader gives, only earlier)."""
    path = Path(recipe.model.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path: {str(path)!r} is not a model directory (no config.json)")


def check_rounds_can_fill_a_step(recipe: Recipe) -> None:
    """ConfigError when iterative rounds could never make `train.pairs_per_step` pairs: `iterative.prompts` (after
    `max_prompts`) times the pairs one prompt can give (1 for best-worst, n(n-1)/2 for all). Ties can still leave a
    round short; that round's training then stops with the same kind of line, naming its pairs file."""
    it = recipe.iterative
    if recipe.algorithm not in PREFERENCE_ALGORITHMS or it.rounds == 0 or it.prompts is None:
        return
    from alignment.recipes.prompt_data import load_prompts

    prompts = len(load_prompts(it.prompts, recipe.data.prompt_column, it.max_prompts))
    per_prompt = 1 if it.pairs == "best-worst" else it.n * (it.n - 1) // 2
    if prompts * per_prompt < recipe.train.pairs_per_step:
        raise ConfigError(
            f"train.pairs_per_step: {recipe.train.pairs_per_step} per step, but the {prompts} prompts of "
            f"iterative.prompts make at most {prompts * per_prompt} pairs per round (iterative.pairs: {it.pairs}); "
            "lower train.pairs_per_step or add prompts"
        )


def check_before_training(recipe: Recipe) -> None:
    """Everything above, before the run folder is opened or any model is loaded."""
    check_launcher(recipe)
    check_report_backends(recipe)
    check_model_folder(recipe)
    check_lengths_fit(recipe)
    check_rounds_can_fill_a_step(recipe)


def check_steps_have_data(rows: int, recipe: Recipe, source: Any) -> None:
    """ConfigError when one optimiser step needs more prompts (GRPO) or pairs (preference) than `source` holds:
    the trainer would otherwise run 0 steps (GRPO) or silently smaller batches."""
    t = recipe.train
    if recipe.algorithm in PREFERENCE_ALGORITHMS:
        field, per_step, what = "train.pairs_per_step", t.pairs_per_step, "usable pairs"
    else:
        field, per_step, what = "train.prompts_per_step", t.prompts_per_step, "prompts"
    if rows < per_step:
        limit = " (after data.max_rows)" if recipe.data.max_rows is not None else ""
        raise ConfigError(
            f"{field}: {per_step} per step, but {source} has only {rows} {what}{limit}; lower {field} to at most "
            f"{rows} or add data"
        )
