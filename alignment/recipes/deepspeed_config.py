"""The recipe's `train.deepspeed` JSON, read and checked when the recipe is loaded (not minutes later in every
process of a launched run).

A DeepSpeed config is more than numbers: some of its sections import classes by name
(`torch_autocast.lower_precision_safe_modules`), start monitors that write files anywhere or send data away
(`tensorboard`, `csv_monitor`, `wandb`, `comet`, `flops_profiler`), or run whole subsystems (`autotuning`,
`nebula`, `compression_training`, `data_efficiency`). A recipe may use only the sections in `ALLOWED_SECTIONS`,
with the basic types checked here, and the values the recipe also sets (gradient accumulation, clipping, learning
rate, precision) must agree with it, as transformers demands once training starts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError

MAX_BYTES = 1 << 20
ALLOWED_SECTIONS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "steps_per_print",
        "wall_clock_breakdown",
        "memory_breakdown",
        "dump_state",
        "prescale_gradients",
        "gradient_predivide_factor",
        "communication_data_type",
        "seq_parallel_communication_data_type",
        "sparse_gradients",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "fp16",
        "bf16",
        "bfloat16",
        "data_types",
        "optimizer",
        "scheduler",
        "zero_optimization",
        "activation_checkpointing",
        "aio",
        "checkpoint",
        "torch_autocast",
    }
)
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_deepspeed_config(path: str | Path, where: str = "train.deepspeed") -> dict[str, Any]:
    """The parsed JSON object in `path`; ConfigError naming `where` and the file when it cannot be read, is not
    JSON (also: a key repeated, NaN/Infinity, nesting too deep, larger than 1 MiB) or is not an object."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{where}: {str(path)!r} cannot be read ({err.strerror or type(err).__name__})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{where}: {str(path)!r} is larger than {MAX_BYTES} bytes; not a DeepSpeed config")
    try:
        config = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _DuplicateKey as err:
        raise ConfigError(f"{where}: {str(path)!r} repeats the key {str(err)!r} in one object") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: {str(path)!r} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: {str(path)!r} is not valid JSON (line {err.lineno}: {err.msg})") from None
    except (ValueError, RecursionError) as err:
        detail = str(err).splitlines()[0] if str(err) else "nested too deeply"
        raise ConfigError(f"{where}: {str(path)!r} is not valid JSON ({detail})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: {str(path)!r} must hold a JSON object of DeepSpeed settings")
    return config


def _is_auto(value: Any) -> bool:
    return value == "auto"


def _number(value: Any) -> bool:
    """A finite JSON number that fits a float (a 400-digit integer does not)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, float) and math.isfinite(value)


def check_deepspeed_config(config: dict[str, Any], recipe: Any, where: str = "train.deepspeed") -> None:
    """Refuse sections outside `ALLOWED_SECTIONS`, malformed basic values, and values that disagree with the recipe
    (transformers would refuse them after the model is loaded). ConfigError ``train.deepspeed: <file>: ...``."""
    name = f"{where}: {Path(recipe.train.deepspeed).name}"
    unknown = sorted(set(config) - ALLOWED_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{name}: section {unknown[0]!r} is not allowed (sections that import code, write files or start "
            f"services are refused); allowed: {', '.join(sorted(ALLOWED_SECTIONS))}"
        )
    for key in BATCH_KEYS:
        value = config.get(key, "auto")
        if not (_is_auto(value) or (isinstance(value, int) and not isinstance(value, bool) and value > 0)):
            raise ConfigError(f'{name}: {key} must be a positive integer or "auto", got {value!r}')
    clipping = config.get("gradient_clipping", "auto")
    if not (_is_auto(clipping) or (_number(clipping) and clipping >= 0)):
        raise ConfigError(f'{name}: gradient_clipping must be a number >= 0 or "auto", got {clipping!r}')
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{name}: zero_optimization must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"{name}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    for section in ("fp16", "bf16", "bfloat16", "optimizer", "scheduler", "activation_checkpointing", "aio"):
        if section in config and not isinstance(config[section], dict):
            raise ConfigError(f"{name}: {section} must be an object, got {config[section]!r}")
    for section in ("optimizer", "scheduler"):
        block = config.get(section)
        if block is None:
            continue
        kind = block.get("type")
        if not (isinstance(kind, str) and kind.isidentifier()):
            raise ConfigError(f"{name}: {section}.type must name a DeepSpeed {section}, got {kind!r}")
        if not isinstance(block.get("params", {}), dict):
            raise ConfigError(f"{name}: {section}.params must be an object")
    autocast = config.get("torch_autocast", {})
    if not isinstance(autocast, dict) or "lower_precision_safe_modules" in autocast:
        raise ConfigError(
            f"{name}: torch_autocast.lower_precision_safe_modules imports classes by name and is refused; "
            "leave it out (DeepSpeed's default list is used)"
        )
    _check_agrees_with_recipe(config, recipe, name)


def _check_agrees_with_recipe(config: dict[str, Any], recipe: Any, name: str) -> None:
    """The values transformers matches against the recipe's (`fill_match`), where the recipe alone decides them."""
    t = recipe.train
    steps = recipe.iterative.steps_per_round if recipe.iterative.rounds > 0 else t.max_steps
    precision = {"fp16": recipe.model.dtype == "float16", "bf16": recipe.model.dtype == "bfloat16"}
    expected = {
        ("gradient_accumulation_steps",): (t.gradient_accumulation_steps, "train.gradient_accumulation_steps"),
        ("gradient_clipping",): (t.max_grad_norm, "train.max_grad_norm"),
        ("optimizer", "params", "lr"): (t.learning_rate, "train.learning_rate"),
        ("scheduler", "params", "warmup_max_lr"): (t.learning_rate, "train.learning_rate"),
        ("scheduler", "params", "total_num_steps"): (steps, "train.max_steps"),
        ("scheduler", "params", "warmup_num_steps"): (max(1, t.warmup_steps), "train.warmup_steps"),
        ("fp16", "enabled"): (precision["fp16"], "model.dtype"),
        ("bf16", "enabled"): (precision["bf16"], "model.dtype"),
    }
    for keys, (wanted, field) in expected.items():
        node: Any = config
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None or _is_auto(node):
            continue
        if node != wanted:
            raise ConfigError(
                f'{name}: {".".join(keys)} = {node!r} disagrees with {field} ({wanted!r}); set it to "auto" '
                "(transformers fills it from the recipe)"
            )


def load_and_check(recipe: Any) -> dict[str, Any]:
    """Read and check the recipe's `train.deepspeed` file (see `check_deepspeed_config`)."""
    config = read_deepspeed_config(recipe.train.deepspeed)
    check_deepspeed_config(config, recipe)
    return config
