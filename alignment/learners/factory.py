"""One place that builds what a run needs from a recipe: the policy and tokenizer, the LoRA config, the reward
composer (also from a `--reward` spec) and the rollout engine. Training, iterative rounds, `align sample`,
`align eval-rm` and checkpoint evaluation all build through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignment.errors import ConfigError
from alignment.recipes.loader import load_dataclass
from alignment.recipes.recipe import Recipe, RewardsConfig
from alignment.recipes.yaml_loading import read_yaml_file
from rewards.composer import Objective, RewardComposer
from rewards.errors import RewardConfigError
from rewards.masking import LengthCondition
from rewards.registry import COMPONENTS, build_component
from rewards.weighting import StaticWeights, build_weighting


def load_model_and_tokenizer(recipe: Recipe) -> tuple[Any, Any]:
    """The recipe's policy (safetensors only; with `model.adapter` as a trainable PEFT model) and its tokenizer
    (left padding, pad = eos when it has none). ConfigError naming model.path / model.adapter when they do not load.
    """
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


def peft_config(recipe: Recipe, model: Any) -> Any:
    """The LoraConfig of a new adapter (None for full fine-tuning, or when `model.adapter` is trained further);
    ConfigError when a target module is not in the model."""
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


def build_composer(recipe: Recipe) -> RewardComposer:
    """The recipe's reward composer; bad component names or arguments raise ConfigError."""
    return build_composer_from(recipe.rewards, seed=recipe.seed)


def build_composer_from(rewards: RewardsConfig, seed: int | None = None) -> RewardComposer:
    """A composer from a recipe's `rewards` section; bad names, arguments, masks or weighting options raise
    ConfigError naming the field. `seed` (the recipe's) seeds the Lagrange multipliers' initial draw unless
    the options give one."""
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
    if rewards.weighting.strategy == "lagrangian" and seed is not None:
        options.setdefault("seed", seed)
    try:
        weighting = build_weighting(rewards.weighting.strategy, len(names), names, **options)
        return RewardComposer(
            objectives, weighting, rewards.normalization, masks=masks or None, timeout=rewards.timeout
        )
    except RewardConfigError as err:
        raise ConfigError(f"rewards.{err}" if str(err).startswith("weighting") else f"rewards: {err}") from None


def composer_from_spec(spec: str) -> RewardComposer:
    """A composer from SPEC: a component name, a `module:function`, a reward-model folder, or a YAML file
    holding a recipe (its `rewards` section) or a bare `objectives:` list."""
    path = Path(spec).expanduser()
    try:
        if spec.endswith((".yaml", ".yml")):
            return _composer_from_yaml(path)
        if path.is_dir():
            component = build_component("reward_model", "reward_model", {"path": str(path)})
            return RewardComposer([Objective(component.name, component)], StaticWeights([1.0]))
        if spec in COMPONENTS or ":" in spec:
            component = build_component(spec, spec, {})
            return RewardComposer([Objective(component.name, component)], StaticWeights([1.0]))
    except RewardConfigError as err:
        raise ConfigError(f"--reward {spec}: {err}") from None
    raise ConfigError(
        f"--reward: {spec!r} is not a component ({', '.join(sorted(COMPONENTS))}), a module:function, a reward "
        "model folder or a YAML file"
    )


def _composer_from_yaml(path: Path) -> RewardComposer:
    if not path.is_file():
        raise ConfigError(f"--reward: {str(path)!r} does not exist")
    data = read_yaml_file(path, f"--reward {path}")
    if not isinstance(data, dict):
        raise ConfigError(f"--reward: {path} must hold a mapping")
    section = data.get("rewards", data)
    rewards = load_dataclass(RewardsConfig, section, "rewards")
    return build_composer_from(rewards)


def build_rollout_engine(recipe: Recipe, model: Any, tokenizer: Any) -> Any:
    """The recipe's rollout engine: transformers (the learner's own model), vllm (falls back to transformers with a
    warning when vllm cannot be imported) or a rollout server (`rollout.server_url`); the last two are synced
    after every update. ConfigError for a bad weight_sync or an unreachable server."""
    from rollout.base import RolloutServerError
    from rollout.factory import build_engine
    from rollout.weight_sync import resolve_sync_mode

    try:
        resolve_sync_mode(recipe.rollout.weight_sync, uses_peft=recipe.peft.enabled)
    except ValueError as err:
        raise ConfigError(f"rollout.weight_sync: {err}") from None
    try:
        return build_engine(
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
