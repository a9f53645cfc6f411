"""The recipe: dataclasses loaded from YAML, every field validated up front.

A recipe names the algorithm, the policy, the data, the rollout engine, the reward composition and the
training hyper-parameters. `load_recipe(path, overrides)` reads the YAML with a safe loader, applies
`--set key=value` overrides and returns a validated `Recipe`; any problem raises `ConfigError` with a
message naming the field, the bad value and what is allowed.

Paths are resolved by `alignment.recipes.paths.resolve_path` (``builtin:`` assets, then the current directory,
then the recipe's own folder).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignment.errors import ConfigError
from alignment.recipes.checks import MAX_BACKOFF_S, MAX_RETRIES, SEED_MAX
from alignment.recipes.checks import check as _check
from alignment.recipes.checks import check_timeout as _check_timeout
from alignment.recipes.deepspeed_config import load_and_check as load_and_check_deepspeed
from alignment.recipes.loader import apply_overrides, load_dataclass
from alignment.recipes.paths import resolve_path
from alignment.recipes.preference_config import IterativeConfig, PreferenceConfig
from alignment.recipes.vllm_options import check_vllm_options
from alignment.recipes.yaml_loading import check_tree, read_yaml_file

ALGORITHMS = ("grpo", "dpo", "rpo", "sparsepo")
PREFERENCE_ALGORITHMS = ("dpo", "rpo", "sparsepo")


@dataclass
class ModelConfig:
    """The policy to train: a local model directory (or ``builtin:tiny-policy``), optionally with a PEFT adapter
    folder (`adapter`) to continue training instead of starting a new one (then `peft` is not used)."""

    path: str = "builtin:tiny-policy"
    adapter: str | None = None
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
    """How samples are generated (the rollout worker in rollout/; engines picked by rollout/factory.py).

    engine: transformers (the learner's own model, CPU default) or vllm (`vllm.LLM` in this process; falls back
    to transformers with a warning when vllm cannot be imported). server_url: http://host:port of a rollout
    server, or a list of them (a fleet: prompts split over the servers, a server that dies is dropped and its
    prompts retried on the others); server_kind: auto (read from each server's endpoints), align (`align
    serve-rollout`, whatever its engine) or vllm (vLLM's OpenAI server); request_timeout_s, retries and
    retry_backoff_s (doubling) for unreachable servers; sync_dir: a folder the vLLM servers read synced weights
    from at the same path (null: a temporary folder, servers on this machine only). weight_sync: what vLLM or
    the servers get after each update: auto (the LoRA adapter when peft is on, else full weights), full or adapter.
    max_prompt_tokens: prompt budget (null: the model's context minus max_new_tokens); longer prompts are cut
    from the left with a count logged (prompt_truncation: left) or stop the run (error). gpu_memory_utilization,
    sleep_mode, vllm_options: vLLM's LLM(...) settings (sleep_mode frees its memory between generations).
    """

    engine: Literal["transformers", "vllm"] = "transformers"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    batch_size: int = 64
    max_prompt_tokens: int | None = None
    prompt_truncation: Literal["left", "error"] = "left"
    server_url: str | list[str] | None = None
    server_kind: Literal["auto", "align", "vllm"] = "auto"
    sync_dir: str | None = None
    request_timeout_s: float = 600.0
    retries: int = 5
    retry_backoff_s: float = 0.5
    weight_sync: Literal["auto", "full", "adapter"] = "auto"
    gpu_memory_utilization: float = 0.5
    sleep_mode: bool = False
    vllm_options: dict[str, Any] = field(default_factory=dict)

    def sampling_params(self, n: int = 1, seed: int | None = None) -> Any:
        """These settings as the rollout worker's `SamplingParams` (n samples per prompt, optional seed)."""
        from rollout.base import SamplingParams

        return SamplingParams(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_new_tokens,
            stop=tuple(self.stop),
            seed=seed,
        )

    def validate(self, where: str) -> None:
        _check(self.temperature > 0, f"{where}.temperature", f"must be > 0, got {self.temperature}")
        if self.engine == "vllm":  # vLLM's SamplingParams refuses more
            _check(self.temperature <= 2, f"{where}.temperature", f"must be <= 2 with vllm, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"{where}.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"{where}.top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        _check(self.max_new_tokens > 0, f"{where}.max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        _check(self.batch_size > 0, f"{where}.batch_size", f"must be positive, got {self.batch_size}")
        if self.max_prompt_tokens is not None:
            _check(
                self.max_prompt_tokens > 0,
                f"{where}.max_prompt_tokens",
                f"must be positive or null, got {self.max_prompt_tokens}",
            )
        if self.server_url is not None:
            from rollout.remote_engine import parse_server_url

            urls = [self.server_url] if isinstance(self.server_url, str) else self.server_url
            _check(bool(urls), f"{where}.server_url", "must name at least one server (or be null)")
            for i, url in enumerate(urls):
                field_name = f"{where}.server_url" if isinstance(self.server_url, str) else f"{where}.server_url[{i}]"
                try:
                    parse_server_url(url)
                except ValueError as err:
                    raise ConfigError(f"{field_name}: {err}") from None
            _check(len(set(urls)) == len(urls), f"{where}.server_url", f"lists a server twice: {urls}")
        _check(self.request_timeout_s > 0, f"{where}.request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        _check_timeout(self.request_timeout_s, f"{where}.request_timeout_s", allow_null=False)
        _check(self.retries >= 0, f"{where}.retries", f"must be >= 0, got {self.retries}")
        _check(self.retries <= MAX_RETRIES, f"{where}.retries", f"must be at most {MAX_RETRIES}, got {self.retries}")
        _check(self.retry_backoff_s >= 0, f"{where}.retry_backoff_s", f"must be >= 0, got {self.retry_backoff_s}")
        _check(
            self.retry_backoff_s <= MAX_BACKOFF_S,
            f"{where}.retry_backoff_s",
            f"must be at most {MAX_BACKOFF_S:g} seconds, got {self.retry_backoff_s:g}",
        )
        _check(
            0 < self.gpu_memory_utilization <= 1,
            f"{where}.gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        check_vllm_options(self.vllm_options, f"{where}.vllm_options")


@dataclass
class ObjectiveConfig:
    """One objective of the composition: a reward component, its weight and its arguments."""

    name: str
    component: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    # Length-conditional mask (BalCapRL): {unit, reference | target, tau_l, tau_u, outside: zero|nan, missing}
    length_condition: dict[str, Any] | None = None
    # Seconds one call of this component may take before its rows count as timed out (null: rewards.timeout).
    timeout: float | None = None

    def validate(self, where: str) -> None:
        _check(bool(self.name), f"{where}.name", "must be a non-empty name")
        _check_timeout(self.timeout, f"{where}.timeout")
        from rewards.errors import RewardConfigError
        from rewards.registry import check_spec

        try:  # the spec's shape only: nothing is imported until the composer is built
            check_spec(self.component, f"{where}.component")
        except RewardConfigError as err:
            raise ConfigError(str(err)) from None


@dataclass
class HeldOutEvalConfig:
    """The held-out pass a weighting strategy can ask for during training (hypervolume with `source: eval`).

    prompts: a prompt dataset (default: data.eval); max_prompts: the first N rows (null: all); samples: completions
    per prompt; greedy: decode greedily (top_k 1, as the authors' validation), else sample with the rollout's
    settings, seeded by (recipe seed, step) so a resumed run repeats it; max_new_tokens: null = the rollout's.
    """

    prompts: str | None = None
    max_prompts: int | None = None
    samples: int = 1
    greedy: bool = True
    max_new_tokens: int | None = None

    def validate(self, where: str) -> None:
        if self.max_prompts is not None:
            _check(self.max_prompts > 0, f"{where}.max_prompts", f"must be positive or null, got {self.max_prompts}")
        _check(self.samples > 0, f"{where}.samples", f"must be positive, got {self.samples}")
        if self.max_new_tokens is not None:
            _check(
                self.max_new_tokens > 0,
                f"{where}.max_new_tokens",
                f"must be positive or null, got {self.max_new_tokens}",
            )


@dataclass
class WeightingConfig:
    """How the objectives' weights move during training (see rewards/weighting/ for each strategy).

    static: the objectives' weights. hypervolume (Lu et al., 2025): the weights plus a meta-factor from the
    Pareto buffer's hypervolume gain; options scales, reference, buffer_size, placement (advantages|rewards),
    maximize, source (batch|eval), eval_every. gradient (Lu et al., 2025): mirror descent on gradient influence;
    options eta or regularization, eta_schedule, update_interval, average_interval, clip_norm, layer_band.
    lagrangian (Moskovitz et al., 2024): constraints [{objective, threshold, direction: lower|upper|equal}],
    base, form (moskovitz|unsquashed|safe_rlhf), lr, momentum, init, max_grad_norm, lambda_max, seed,
    minibatches, epochs. `eval`: the held-out pass for hypervolume's `source: eval`.
    """

    strategy: Literal["static", "hypervolume", "gradient", "lagrangian"] = "static"
    options: dict[str, Any] = field(default_factory=dict)
    eval: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)

    def wants_heldout(self) -> bool:
        """Whether training runs held-out passes for the strategy (hypervolume with `source: eval`)."""
        return self.strategy == "hypervolume" and self.options.get("source") == "eval"


@dataclass
class RewardsConfig:
    """The reward composer: objectives, normalisation, weighting, and `timeout`: the seconds one reward
    component call may take (per objective `timeout` overrides it; null = no limit). A call that takes longer
    is abandoned; its rows are retried one by one and those that time out again become NaN (not applicable),
    counted per objective as rewards/<name>/timeouts, and the run goes on."""

    objectives: list[ObjectiveConfig] = field(default_factory=list)
    normalization: Literal["group", "batch", "none", "decoupled"] = "group"
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    # Held-out "gold" objectives: scored only when checkpoints are evaluated (alignment/evaluate.py), never
    # trained on; the Pareto report plots the proxy objectives against them over KL (overoptimization view).
    gold: list[ObjectiveConfig] = field(default_factory=list)
    timeout: float | None = 300.0

    def validate(self, where: str) -> None:
        _check_timeout(self.timeout, f"{where}.timeout")
        names = [o.name for o in self.objectives]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _check(not duplicates, f"{where}.objectives", f"objective names must be unique; repeated: {duplicates}")
        gold = [o.name for o in self.gold]
        clashes = sorted({n for n in gold if gold.count(n) > 1 or n in names})
        _check(not clashes, f"{where}.gold", f"gold objective names must be unique and not objectives; got {clashes}")
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
    pairs_per_step: int = 8  # preference learners: pairs per optimiser step (all processes together)
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
        names = ("max_steps", "prompts_per_step", "pairs_per_step", "gradient_accumulation_steps", "logging_steps")
        for name in (*names, "save_steps"):
            value = getattr(self, name)
            _check(value > 0, f"{where}.{name}", f"must be a positive integer, got {value}")
        _check(self.num_generations >= 2, f"{where}.num_generations", "GRPO needs at least 2 samples per prompt")
        _check(self.learning_rate > 0, f"{where}.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.beta >= 0, f"{where}.beta", f"must be >= 0, got {self.beta}")
        _check(0 < self.epsilon < 1, f"{where}.epsilon", f"must be in (0, 1), got {self.epsilon}")
        if self.epsilon_high is not None:
            _check(
                self.epsilon_high > 0,
                f"{where}.epsilon_high",
                f"the upper clipping range must be > 0 (DAPO uses 0.28) or null, got {self.epsilon_high:g}",
            )
        _check(self.warmup_steps >= 0, f"{where}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.max_grad_norm > 0, f"{where}.max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        if self.save_total_limit is not None:
            _check(self.save_total_limit > 0, f"{where}.save_total_limit", "must be positive or null")
        if self.torch_threads is not None:
            _check(
                0 < self.torch_threads <= 1024,
                f"{where}.torch_threads",
                f"must be between 1 and 1024 or null, got {self.torch_threads}",
            )


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
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str | None = None  # the recipe file it came from (set by load_recipe)

    def validate(self, where: str) -> None:
        _check(0 <= self.seed <= SEED_MAX, "seed", f"must be in 0-{SEED_MAX} (numpy's seed range), got {self.seed}")
        _check(
            self.algorithm in ALGORITHMS,
            "algorithm",
            f"unknown algorithm {self.algorithm!r}; available: {', '.join(ALGORITHMS)}",
        )
        if self.algorithm == "grpo":
            _check(len(self.rewards.objectives) > 0, "rewards.objectives", "needs at least one objective (grpo)")
            if self.rewards.weighting.wants_heldout():
                _check(
                    bool(self.rewards.weighting.eval.prompts or self.data.eval),
                    "rewards.weighting.options.source",
                    "eval measures the policy on held-out prompts during training; set rewards.weighting.eval.prompts "
                    "or data.eval (or use source: batch)",
                )
        else:
            if self.iterative.rounds > 0:
                _check(bool(self.iterative.prompts), "iterative.prompts", "iterative rounds need a prompt file")
                _check(
                    len(self.rewards.objectives) > 0,
                    "rewards.objectives",
                    "iterative rounds score their samples with the rewards composer; list at least one objective",
                )
            _check(
                self.rewards.weighting.strategy == "static",
                "rewards.weighting.strategy",
                f"{self.rewards.weighting.strategy!r} weighting moves weights during on-policy training (grpo); "
                f"{self.algorithm} learns from fixed pairs, use 'static'",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping of every field (what the run folder's resolved config holds)."""
        return asdict(self)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a YAML recipe; resolve its paths. Raises ConfigError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist or is not a file")
    data = read_yaml_file(path, f"recipe {str(path)!r}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r}: the top level must be a mapping of sections")
    data.pop("source", None)
    apply_overrides(data, overrides or [])
    check_tree(data, f"recipe {str(path)!r} with its --set overrides" if overrides else f"recipe {str(path)!r}")
    recipe = load_dataclass(Recipe, data, "")
    recipe.source = str(path.resolve())
    base = path.resolve().parent
    recipe.model.path = resolve_path(recipe.model.path, base, "model.path")
    if recipe.model.adapter is not None:
        recipe.model.adapter = resolve_path(recipe.model.adapter, base, "model.adapter")
    if recipe.iterative.prompts is not None:
        recipe.iterative.prompts = resolve_path(recipe.iterative.prompts, base, "iterative.prompts")
    recipe.data.train = resolve_path(recipe.data.train, base, "data.train")
    if recipe.data.eval is not None:
        recipe.data.eval = resolve_path(recipe.data.eval, base, "data.eval")
    held_out = recipe.rewards.weighting.eval
    if held_out.prompts is not None:
        held_out.prompts = resolve_path(held_out.prompts, base, "rewards.weighting.eval.prompts")
    if recipe.train.deepspeed is not None:
        recipe.train.deepspeed = resolve_path(recipe.train.deepspeed, base, "train.deepspeed")
        load_and_check_deepspeed(recipe)  # now, not minutes later in every launched process
    return recipe
