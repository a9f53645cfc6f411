"""`align sweep RECIPE.yaml --weights "0.2,0.8;0.5,0.5;0.8,0.2" [--strategies static,hypervolume,lagrangian]`.

Trains one run per weighting / strategy of a recipe, one after the other in this process, each an ordinary
run folder inside the sweep folder; evaluates each final checkpoint (with ``--intermediate`` every checkpoint
and the initial policy) on a held-out prompt set (`alignment.reports.checkpoint_eval`), and writes the Pareto report
(`align pareto`) into ``SWEEP_DIR/report``.

Which runs: the ``static`` strategy runs once per weighting of ``--weights`` (one weight per objective, in
the recipe's order). Every other strategy runs once with the recipe's own weights, or, with ``--cross``, once
per weighting (the lagrangian strategy always runs with all weights 1: its multipliers are the weights).
Strategy options come from ``--strategy-options NAME=YAML-MAPPING``, else from the recipe when it already uses
that strategy, else the strategy's defaults (lagrangian has none: its constraints must be given).

The sweep folder::

    SWEEP_DIR/
      sweep.json            the plan: each run's name, strategy, weights, overrides and status
      static-w0.2-0.8/      an ordinary run folder (config.yaml, metrics.jsonl, checkpoint-N/, eval/step-N.json)
      hypervolume/ ...
      report/               pareto.json, PNG plots, index.html

``--resume`` continues a sweep that was stopped: finished runs are kept, a run that has a checkpoint resumes
from it, and missing evaluations are made.

Before anything trains or is written, every run's recipe is validated, the held-out prompts are read and (chat
prompts) rendered with the policy's tokenizer, and the destinations are checked: a new sweep needs a missing or
empty folder, ``--resume`` a sweep folder the project made (its ``align-folder.json`` marker), and the report
folder must be new, empty or an earlier report (`alignment.outputs`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError
from alignment.reports.checkpoint_eval import DEFAULT_SEED

STRATEGIES = ("static", "hypervolume", "gradient", "lagrangian")
SWEEP_FILE = "sweep.json"


@dataclass
class SweepRun:
    """One run of a sweep: its folder name, strategy, weights (None = the recipe's) and recipe overrides."""

    name: str
    strategy: str
    weights: list[float] | None
    overrides: list[str] = field(default_factory=list)
    status: str = "planned"


def parse_weights(text: str, k: int, names: list[str] | None = None) -> list[list[float]]:
    """``--weights "0.2,0.8;0.5,0.5"``: weightings separated by ';', K comma-separated finite numbers each.

    ConfigError naming --weights for a wrong count, a non-number, a negative weight or an all-zero weighting.
    """
    import math

    weightings = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            raise ConfigError(f"--weights: {part.strip()!r} is not a list of numbers (e.g. 0.2,0.8)") from None
        if len(values) != k:
            objectives = f" ({', '.join(names)})" if names else ""
            raise ConfigError(
                f"--weights: weighting {i + 1} ({part.strip()}) has {len(values)} values; the recipe has {k} "
                f"objectives{objectives}"
            )
        if not all(math.isfinite(v) and v >= 0 for v in values) or not any(v > 0 for v in values):
            raise ConfigError(f"--weights: weighting {i + 1} ({part.strip()}) must be finite, >= 0 and not all 0")
        weightings.append(values)
    if not weightings:
        raise ConfigError(f"--weights: no weighting in {text!r}; separate weightings with ';', e.g. 0.2,0.8;0.8,0.2")
    return weightings


def parse_strategies(text: str) -> list[str]:
    """``--strategies static,hypervolume``: known strategy names, no repeats (ConfigError otherwise)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise ConfigError(f"--strategies: {unknown or text!r} not known; choose from {', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--strategies: repeated strategy in {text!r}")
    return names


def parse_strategy_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--strategy-options NAME=MAPPING`` (YAML/JSON mapping, repeatable) -> {strategy: options}."""
    from alignment.recipes.yaml_loading import load_yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or name not in STRATEGIES:
            raise ConfigError(
                f"--strategy-options {item!r}: expected NAME={{...}} with NAME one of {', '.join(STRATEGIES)}"
            )
        value = load_yaml(raw, f"--strategy-options {name}")
        if not isinstance(value, dict):
            raise ConfigError(f"--strategy-options {name}: expected a mapping such as {{eta: 0.1}}, got {raw!r}")
        out[name] = value
    return out


def _weights_tag(weights: list[float]) -> str:
    return "w" + "-".join(f"{w:g}" for w in weights)


def plan_sweep(
    base_weights: list[float],
    base_strategy: str,
    base_options: dict[str, Any],
    weightings: list[list[float]],
    strategies: list[str],
    options: dict[str, dict[str, Any]] | None = None,
    cross: bool = False,
) -> list[SweepRun]:
    """The runs of a sweep, in order, with the `--set` overrides that turn the base recipe into each.

    static: one run per weighting. Other strategies: one run with `base_weights` (one per weighting with
    `cross`); lagrangian always with all weights 1 (its multipliers are the weights) and once only. Options
    per strategy: `options[strategy]`, else the base recipe's when it uses that strategy, else none.
    """
    options = options or {}
    runs: list[SweepRun] = []
    k = len(base_weights)
    for strategy in strategies:
        if strategy in options:
            opts = options[strategy]
        else:
            opts = base_options if strategy == base_strategy else {}
        if strategy == "lagrangian":
            if "constraints" not in opts:
                raise ConfigError(
                    "--strategy-options: the lagrangian strategy needs its constraints, e.g. --strategy-options "
                    "'lagrangian={base: relevance, constraints: [{objective: length, threshold: 0.8}]}'"
                )
            variants: list[list[float] | None] = [[1.0] * k]
        elif strategy == "static" or cross:
            variants = [list(w) for w in weightings]
        else:
            variants = [None]
        for weights in variants:
            if strategy == "static" or (cross and strategy != "lagrangian"):
                name = f"{strategy}-{_weights_tag(weights or base_weights)}"
            else:
                name = strategy
            overrides = [f"rewards.weighting.strategy={strategy}", f"rewards.weighting.options={json.dumps(opts)}"]
            if weights is not None:
                overrides += [f"rewards.objectives.{i}.weight={w!r}" for i, w in enumerate(weights)]
            runs.append(SweepRun(name=name, strategy=strategy, weights=weights, overrides=overrides))
    names = [r.name for r in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--weights: repeated weighting(s) give the same run twice: {repeated}")
    return runs


def _write_plan(sweep_dir: Path, recipe_path: str, runs: list[SweepRun], settings: dict[str, Any]) -> None:
    from alignment.io import atomic_write_json

    atomic_write_json(
        sweep_dir / SWEEP_FILE,
        {"recipe": recipe_path, "settings": settings, "runs": [asdict(r) for r in runs]},
    )


def _done(run_dir: Path, max_steps: int) -> bool:
    from alignment.learners.checkpointing import checkpoint_step, latest_checkpoint

    final = latest_checkpoint(run_dir)
    return final is not None and checkpoint_step(final) >= max_steps


def run_sweep(
    recipe_path: str,
    weights: str,
    strategies: str = "static",
    *,
    strategy_options: list[str] | None = None,
    overrides: list[str] | None = None,
    output_dir: str | None = None,
    cross: bool = False,
    resume: bool = False,
    eval_data: str | None = None,
    eval_prompts: int | None = None,
    eval_samples: int = 4,
    eval_seed: int = DEFAULT_SEED,
    intermediate: bool = False,
    report: bool = True,
    log: Any = print,
) -> Path:
    """Train, evaluate and report every run of the sweep (see the module docstring); returns the sweep folder.

    Every run's recipe is loaded and validated (and its composer built) before anything is trained or written.
    """
    from alignment.learners.chat_check import check_prompt_rendering, load_tokenizer
    from alignment.learners.factory import build_composer
    from alignment.learners.run import prepare_run_dir
    from alignment.learners.train import train
    from alignment.outputs import check_folder, check_outside_runs, check_report_folder, claim_folder, is_run_folder
    from alignment.recipes.recipe import load_recipe
    from alignment.reports.checkpoint_eval import evaluate_run, load_eval_prompts, resolve_eval_data

    base = load_recipe(recipe_path, list(overrides or []))
    names = [o.name for o in base.rewards.objectives]
    plan = plan_sweep(
        [o.weight for o in base.rewards.objectives],
        base.rewards.weighting.strategy,
        dict(base.rewards.weighting.options),
        parse_weights(weights, len(names), names),
        parse_strategies(strategies),
        parse_strategy_options(list(strategy_options or [])),
        cross,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sweep_dir = Path(output_dir) if output_dir else Path("runs") / f"sweep-{Path(recipe_path).stem}-{stamp}"
    check_folder(sweep_dir, "sweep", "--output-dir", resume=resume)
    if not resume:
        check_outside_runs(sweep_dir, "--output-dir")
    if report:
        check_report_folder(sweep_dir / "report", "the sweep's report folder")
    extra = ["train.save_total_limit=null"] if intermediate else []
    recipes = []
    for item in plan:
        where = f"sweep run {item.name}"
        try:
            recipe = load_recipe(
                recipe_path, [*(overrides or []), *item.overrides, *extra, f"output_dir={sweep_dir / item.name}"]
            )
            build_composer(recipe)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        resolved_eval = resolve_eval_data(recipe, eval_data)
        if not resume:
            prepare_run_dir(sweep_dir / item.name, recipe, resume=False)  # refuses a folder holding a run
        recipes.append(recipe)
    eval_prompts_list, _ = load_eval_prompts(resolved_eval, base.data.prompt_column, eval_prompts)
    tokenizer = load_tokenizer(base.model.path, base.model.trust_remote_code)
    check_prompt_rendering(tokenizer, eval_prompts_list, resolved_eval)
    settings = {
        "weights": weights,
        "strategies": strategies,
        "cross": cross,
        "overrides": list(overrides or []),
        "eval_data": resolved_eval,
        "eval_prompts": eval_prompts,
        "eval_samples": eval_samples,
        "eval_seed": eval_seed,
        "intermediate": intermediate,
    }
    claim_folder(sweep_dir, "sweep")
    _write_plan(sweep_dir, str(Path(recipe_path).resolve()), plan, settings)
    for index, (item, recipe) in enumerate(zip(plan, recipes), start=1):
        run_dir = sweep_dir / item.name
        weights_text = (
            "recipe weights" if item.weights is None else ", ".join(f"{n}={w:g}" for n, w in zip(names, item.weights))
        )
        log(f"[{index}/{len(plan)}] {item.name}: {item.strategy} ({weights_text}) -> {run_dir}")
        if _done(run_dir, recipe.train.max_steps):
            log(f"[{index}/{len(plan)}] {item.name}: already trained")
        else:
            item.status = "training"
            _write_plan(sweep_dir, str(Path(recipe_path).resolve()), plan, settings)
            train(recipe, resume=resume and is_run_folder(run_dir))
        item.status = "evaluating"
        _write_plan(sweep_dir, str(Path(recipe_path).resolve()), plan, settings)
        evaluate_run(
            run_dir,
            resolved_eval,
            max_prompts=eval_prompts,
            samples=eval_samples,
            seed=eval_seed,
            intermediate=intermediate,
            include_base=intermediate,
            log=log,
        )
        item.status = "done"
        _write_plan(sweep_dir, str(Path(recipe_path).resolve()), plan, settings)
    if report:
        from alignment.reports.pareto_report import build_report

        data = build_report([sweep_dir / r.name for r in plan], sweep_dir / "report", log=log)
        front = ", ".join(r["name"] for r in data["runs"] if r["final_on_front"])
        log(f"front: {front}; hypervolume {data['hypervolume']:.6g}")
        log(f"report: {sweep_dir / 'report' / 'index.html'}")
    return sweep_dir
