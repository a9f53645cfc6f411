"""The recipe: dataclasses loaded from YAML, every field validated up front.

A recipe names the algorithm, the policy, the data, the rollout engine, the reward composition and the
training hyper-parameters. `load_recipe(path, overrides)` reads the YAML with a safe loader, applies
`--set key=value` overrides and returns a validated `Recipe`; any problem raises `ConfigError` with a
message naming the field, the bad value and what is allowed.

Paths may start with ``builtin:`` to name files shipped inside the package (``builtin:tiny-policy``,
``builtin:quickstart_prompts.jsonl``); other relative paths are taken from the current directory first,
then from the recipe's own folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alignment.config_loader import apply_overrides, load_dataclass
from alignment.errors import ConfigError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
BUILTIN_ASSETS = {"tiny-policy": "tiny_policy"}

ALGORITHMS = ("grpo",)


def resolve_path(value: str, base_dir: Path | None, where: str) -> str:
    """Resolve a recipe path: ``builtin:NAME`` -> packaged asset, relative -> CWD then recipe folder."""
    if value.startswith("builtin:"):
        name = value[len("builtin:") :]
        candidate = ASSETS_DIR / BUILTIN_ASSETS.get(name, name)
        if not candidate.exists():
            shipped = sorted(list(BUILTIN_ASSETS) + [p.name for p in ASSETS_DIR.glob("*.jsonl")])
            raise ConfigError(f"{where}: no built-in asset {name!r}; built-ins: {', '.join(shipped)}")
        return str(candidate)
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or base_dir is None:
        resolved = path
    else:
        resolved = base_dir / path if (base_dir / path).exists() else path
    if not resolved.exists():
        raise ConfigError(f"{where}: {value!r} does not exist (looked in {Path.cwd()} and {base_dir})")
    return str(resolved)


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


@dataclass
class ModelConfig:
    """The policy to train: a local model directory (or ``builtin:tiny-policy``)."""

    path: str = "builtin:tiny-policy"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False

    def validate(self, where: str) -> None:
        _check(bool(self.path), f"{where}.path", "must name a local model directory")


@dataclass
class PeftConfig:
    """LoRA adapter settings (Hu et al., 2021); ``enabled: false`` trains all weights."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self, where: str) -> None:
        _check(self.r > 0, f"{where}.r", f"must be a positive integer, got {self.r}")
        _check(self.alpha > 0, f"{where}.alpha", f"must be a positive integer, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"{where}.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(len(self.target_modules) > 0, f"{where}.target_modules", "must name at least one module")


@dataclass
class DataConfig:
    """Prompt data: a local JSONL/JSON/Parquet file or a `datasets` directory in TRL's format."""

    train: str = "builtin:quickstart_prompts.jsonl"
    eval: str | None = None
    prompt_column: str = "prompt"
    max_rows: int | None = None

    def validate(self, where: str) -> None:
        _check(bool(self.train), f"{where}.train", "must name a dataset file or directory")
        if self.max_rows is not None:
            _check(self.max_rows > 0, f"{where}.max_rows", f"must be positive, got {self.max_rows}")


@dataclass
class RolloutConfig:
    """How samples are generated (the rollout worker in rollout/)."""

    engine: Literal["transformers", "vllm"] = "transformers"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    batch_size: int = 64

    def validate(self, where: str) -> None:
        _check(self.temperature > 0, f"{where}.temperature", f"must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"{where}.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"{where}.top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        _check(self.max_new_tokens > 0, f"{where}.max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        _check(self.batch_size > 0, f"{where}.batch_size", f"must be positive, got {self.batch_size}")


@dataclass
class ObjectiveConfig:
    """One objective of the composition: a reward component, its weight and its arguments."""

    name: str
    component: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    # Length-conditional mask (BalCapRL): {unit, reference | target, tau_l, tau_u, outside: zero|nan, missing}
    length_condition: dict[str, Any] | None = None

    def validate(self, where: str) -> None:
        _check(bool(self.name), f"{where}.name", "must be a non-empty name")


@dataclass
class WeightingConfig:
    """How the objectives' weights move during training (see rewards/weighting.py for each strategy).

    static: the objectives' weights. hypervolume (Lu et al., 2025): the weights plus a meta-factor from the
    Pareto buffer's hypervolume gain; options scales, reference, buffer_size, placement (advantages|rewards),
    maximize, source. gradient (Lu et al., 2025): mirror descent on gradient influence; options eta,
    update_interval, clip_norm. lagrangian (Moskovitz et al., 2024): constraints [{objective, threshold,
    direction: lower|upper|equal}], base, form (moskovitz|unsquashed|safe_rlhf), lr, momentum, init,
    max_grad_norm, lambda_max.
    """

    strategy: Literal["static", "hypervolume", "gradient", "lagrangian"] = "static"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardsConfig:
    """The reward composer: objectives, normalisation and weighting."""

    objectives: list[ObjectiveConfig] = field(default_factory=list)
    normalization: Literal["group", "batch", "none", "decoupled"] = "group"
    weighting: WeightingConfig = field(default_factory=WeightingConfig)

    def validate(self, where: str) -> None:
        _check(len(self.objectives) > 0, f"{where}.objectives", "needs at least one objective")
        names = [o.name for o in self.objectives]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _check(not duplicates, f"{where}.objectives", f"objective names must be unique; repeated: {duplicates}")
        if self.weighting.strategy == "gradient":
            _check(
                len(self.objectives) >= 2,
                f"{where}.weighting.strategy",
                "gradient weighting needs at least two objectives",
            )


@dataclass
class TrainConfig:
    """Optimisation settings; names follow TRL's GRPOConfig where they mean the same."""

    max_steps: int = 60
    learning_rate: float = 5e-4
    prompts_per_step: int = 4
    num_generations: int = 8
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    logging_steps: int = 1
    save_steps: int = 20
    save_total_limit: int | None = 2
    report_to: list[Literal["tensorboard", "wandb", "trackio", "none"]] = field(default_factory=lambda: ["tensorboard"])
    deepspeed: str | None = None
    gradient_checkpointing: bool = False
    torch_threads: int | None = None

    def validate(self, where: str) -> None:
        for name in ("max_steps", "prompts_per_step", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            value = getattr(self, name)
            _check(value > 0, f"{where}.{name}", f"must be a positive integer, got {value}")
        _check(self.num_generations >= 2, f"{where}.num_generations", "GRPO needs at least 2 samples per prompt")
        _check(self.learning_rate > 0, f"{where}.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.beta >= 0, f"{where}.beta", f"must be >= 0, got {self.beta}")
        _check(0 < self.epsilon < 1, f"{where}.epsilon", f"must be in (0, 1), got {self.epsilon}")
        _check(self.max_grad_norm > 0, f"{where}.max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        if self.save_total_limit is not None:
            _check(self.save_total_limit > 0, f"{where}.save_total_limit", "must be positive or null")


@dataclass
class Recipe:
    """A whole training run."""

    algorithm: str = "grpo"
    seed: int = 42
    output_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str | None = None  # the recipe file it came from (set by load_recipe)

    def validate(self, where: str) -> None:
        _check(
            self.algorithm in ALGORITHMS,
            "algorithm",
            f"unknown algorithm {self.algorithm!r}; available: {', '.join(ALGORITHMS)}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping of every field (what the run folder's resolved config holds)."""
        return asdict(self)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a YAML recipe; resolve its paths. Raises ConfigError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist or is not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {detail}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r}: the top level must be a mapping of sections")
    data.pop("source", None)
    apply_overrides(data, overrides or [])
    recipe = load_dataclass(Recipe, data, "")
    recipe.source = str(path.resolve())
    base = path.resolve().parent
    recipe.model.path = resolve_path(recipe.model.path, base, "model.path")
    recipe.data.train = resolve_path(recipe.data.train, base, "data.train")
    if recipe.data.eval is not None:
        recipe.data.eval = resolve_path(recipe.data.eval, base, "data.eval")
    if recipe.train.deepspeed is not None:
        recipe.train.deepspeed = resolve_path(recipe.train.deepspeed, base, "train.deepspeed")
    return recipe
