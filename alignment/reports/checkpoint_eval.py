"""Held-out evaluation of a run's checkpoints (`align evaluate RUN_DIR... [--intermediate]`).

For each evaluated checkpoint the policy (the base model plus the checkpoint's LoRA adapter, or the
checkpoint's full weights) samples `samples` completions for every prompt of a held-out prompt set with the
rollout worker's transformers engine (the recipe's sampling settings, a fixed seed, so every checkpoint and
every run of a sweep sees the same prompts and random numbers), and the run's own reward composer scores them
per objective. Held-out gold objectives (`rewards.gold` in the recipe) are scored too but were never trained
on. The KL from the reference (the base model) is estimated on the same samples.

File format (one JSON file per evaluated step, written atomically, so a killed evaluation leaves only whole
files): ``RUN_DIR/eval/step-<N>.json`` where N is the checkpoint's global step (0 = the initial policy)::

    {
      "format": "align-eval/1",
      "step": 60,                               # global training step (0 = the policy before training)
      "checkpoint": "checkpoint-60",            # folder name inside the run (null for step 0)
      "names": ["relevance", "length"],         # the proxy objectives in the recipe's order
      "objectives": {                           # per proxy objective (keys sorted in the file)
        "relevance": {"mean": 0.54, "std": 0.21, "n": 128, "failures": 0, "masked": 0},
        "length":    {"mean": 0.83, "std": 0.12, "n": 128, "failures": 0, "masked": 0}
      },
      "gold": {"quality": {"mean": ..., "std": ..., "n": ..., "failures": ..., "masked": 0}},  # {} if none
      "kl": {"sequence": 3.1, "token": 0.09},   # mean over samples of sum_t log pi/pi_ref, and that sum per token
      "completion_tokens": 35.2,                # mean completion length in tokens
      "eval_data": "/abs/path/prompts.jsonl", "prompts": 32, "samples_per_prompt": 4, "seed": 1234,
      "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 48},
      "seconds": 4.2, "created": "2026-11-23T10:15:00+00:00"
    }

`mean`/`std` are over the scored completions (NaN = not applicable is left out, `n` counts the rest). The KL is
the Monte-Carlo estimate E_{y ~ pi}[log pi(y|x) - log pi_ref(y|x)] with both log-probabilities from a forward
pass at temperature 1; when sampling at another temperature it is that expectation under the tempered
sampler (then not exactly KL(pi || pi_ref)). `align pareto` reads these files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alignment.errors import ConfigError, DataError

EVAL_DIR = "eval"
EVAL_FORMAT = "align-eval/1"
DEFAULT_SEED = 1234


def eval_file(run_dir: str | Path, step: int) -> Path:
    """Where the evaluation of `step` (0 = the initial policy) lives inside a run folder."""
    return Path(run_dir) / EVAL_DIR / f"step-{int(step)}.json"


def summarise_scores(matrix: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-objective mean, population std and count of a score matrix R[N, K] whose NaN entries are skipped.

    Returns {name: {"mean", "std", "n"}}; an objective with no finite value gets mean and std NaN and n 0.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(f"expected a score matrix [N, {len(names)}], got shape {matrix.shape}")
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        column = matrix[:, k]
        valid = column[np.isfinite(column)]
        if valid.size:
            out[name] = {"mean": float(valid.mean()), "std": float(valid.std()), "n": int(valid.size)}
        else:
            out[name] = {"mean": math.nan, "std": math.nan, "n": 0}
    return out


def kl_estimate(policy_logps: Sequence[Sequence[float]], ref_logps: Sequence[Sequence[float]]) -> dict[str, float]:
    """Monte-Carlo KL from the reference on samples of the policy.

    Args:
        policy_logps: per sample, the log-probabilities log pi(y_t | x, y_<t) of its completion tokens.
        ref_logps: the same under the reference policy (same lengths).

    Returns:
        {"sequence": mean over samples of sum_t (log pi - log pi_ref), "token": that total divided by the
        total number of tokens}. Samples with no tokens count as 0 nats and 0 tokens.
    """
    if len(policy_logps) != len(ref_logps):
        raise ValueError(f"{len(policy_logps)} policy samples but {len(ref_logps)} reference samples")
    totals, tokens = [], 0
    for i, (p, r) in enumerate(zip(policy_logps, ref_logps)):
        if len(p) != len(r):
            raise ValueError(f"sample {i}: {len(p)} policy log-probabilities but {len(r)} reference ones")
        totals.append(float(np.sum(np.asarray(p, dtype=np.float64) - np.asarray(r, dtype=np.float64))))
        tokens += len(p)
    if not totals:
        return {"sequence": math.nan, "token": math.nan}
    return {"sequence": float(np.mean(totals)), "token": float(np.sum(totals) / tokens) if tokens else 0.0}


def read_eval_file(path: str | Path) -> dict[str, Any]:
    """One evaluation file, checked: DataError naming the file when it is not valid JSON or not this format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable evaluation file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != EVAL_FORMAT:
        raise DataError(
            f"{path}: not an {EVAL_FORMAT} evaluation file (format {data.get('format')!r})"
            if isinstance(data, dict)
            else f"{path}: not an {EVAL_FORMAT} evaluation file"
        )
    step, objectives = data.get("step"), data.get("objectives")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise DataError(f"{path}: 'step' must be a non-negative integer, got {step!r}")
    if not isinstance(objectives, dict) or not objectives:
        raise DataError(f"{path}: 'objectives' must map objective names to scores")
    for section in ("objectives", "gold"):
        for name, entry in (data.get(section) or {}).items():
            if not isinstance(entry, dict) or "mean" not in entry:
                raise DataError(f"{path}: {section}.{name} has no 'mean'")
    return data


def read_eval_scores(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable evaluation of a run, by step, and one line per file that was skipped (never raises)."""
    folder = Path(run_dir) / EVAL_DIR
    records, problems = [], []
    if not folder.is_dir():
        return [], []
    for path in sorted(folder.glob("step-*.json")):
        try:
            records.append(read_eval_file(path))
        except DataError as err:
            problems.append(str(err))
    records.sort(key=lambda r: r["step"])
    return records, problems


def recipe_from_run(run_dir: str | Path) -> Any:
    """The resolved recipe a run folder was trained with (its config.yaml), validated; ConfigError if absent."""
    from alignment.recipes.loader import load_dataclass
    from alignment.recipes.recipe import Recipe
    from alignment.recipes.yaml_loading import read_yaml_file

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml (not a run folder, or a run killed before it started)")
    data = read_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a recipe mapping")
    data.pop("source", None)
    return load_dataclass(Recipe, data, "")


def load_eval_prompts(
    path: str | Path, prompt_column: str = "prompt", max_prompts: int | None = None
) -> tuple[list[Any], dict[str, list[Any]]]:
    """Held-out prompts and their other columns (which reach the reward components) from a TRL prompt dataset."""
    from alignment.recipes.prompt_data import load_prompts

    dataset = load_prompts(path, prompt_column, max_prompts)
    rows = [dict(row) for row in dataset]
    prompts = [row.pop("prompt") for row in rows]
    columns = {key: [row.get(key) for row in rows] for key in (rows[0] if rows else {})}
    return prompts, columns


def completion_logprobs(
    model: Any, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, batch_size: int = 32
) -> list[list[float]]:
    """Teacher-forced log pi(y_t | x, y_<t) of every completion token, at temperature 1.

    Args:
        model: a causal LM (or PEFT model).
        sequences: (prompt ids, completion ids) pairs.
        pad_id: the tokenizer's pad token id (right padding; positions past a sequence are ignored).
    """
    import torch

    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        full = [list(p) + list(c) for p, c in chunk]
        width = max(len(ids) for ids in full)
        ids = torch.full((len(full), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(full), width), dtype=torch.long)
        for row, seq in enumerate(full):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for row, (prompt, completion) in enumerate(chunk):
            first = len(prompt) - 1  # logits at position t predict token t + 1
            out.append(logps[row, first : first + len(completion)].cpu().tolist())
    return out


@dataclass
class EvalSettings:
    """How checkpoints are evaluated: the prompt set, samples per prompt, seed, and batch size."""

    eval_data: str
    max_prompts: int | None = None
    samples: int = 4
    seed: int = DEFAULT_SEED
    batch_size: int = 64


class CheckpointEvaluator:
    """Evaluates one run's checkpoints with the run's recipe (composer, gold objectives, sampling settings)."""

    def __init__(self, recipe: Any, settings: EvalSettings) -> None:
        from alignment.learners.factory import build_composer, build_composer_from

        self.recipe = recipe
        self.settings = settings
        self.prompts, self.columns = load_eval_prompts(
            settings.eval_data, recipe.data.prompt_column, settings.max_prompts
        )
        self.composer = build_composer(recipe)
        self.gold = None
        if recipe.rewards.gold:
            from alignment.recipes.recipe import RewardsConfig

            self.gold = build_composer_from(RewardsConfig(objectives=list(recipe.rewards.gold)))
        self._base: Any = None
        self._tokenizer: Any = None

    def _base_model(self) -> tuple[Any, Any]:
        from alignment.learners.factory import load_model_and_tokenizer

        if self._base is None:
            self._base, self._tokenizer = load_model_and_tokenizer(self.recipe)
            self._base.eval()
        return self._base, self._tokenizer

    def check_prompts(self) -> None:
        """DataError naming the file and row of the first held-out chat prompt the tokenizer cannot render."""
        from alignment.learners.chat_check import check_prompt_rendering

        check_prompt_rendering(self._base_model()[1], self.prompts, self.settings.eval_data)

    def _policy(self, checkpoint: Path | None) -> tuple[Any, Any, Any]:
        """(policy, reference-or-None, tokenizer); reference None means "the policy with its adapter disabled"."""
        from alignment.learners.factory import load_model_and_tokenizer

        if checkpoint is None:
            base, tokenizer = self._base_model()
            return base, base, tokenizer
        if (checkpoint / "adapter_config.json").is_file():
            from peft import PeftModel

            fresh, tokenizer = load_model_and_tokenizer(self.recipe)  # peft injects the adapter in place
            try:
                model = PeftModel.from_pretrained(fresh, str(checkpoint), is_trainable=False)
            except (OSError, ValueError, RuntimeError) as err:
                raise DataError(f"{checkpoint}: cannot load the adapter ({str(err).splitlines()[0]})") from None
            model.eval()
            return model, None, tokenizer
        if (checkpoint / "config.json").is_file():
            from transformers import AutoModelForCausalLM

            base, tokenizer = self._base_model()
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    str(checkpoint), dtype=base.dtype, local_files_only=True, use_safetensors=True
                )
            except (OSError, ValueError) as err:
                raise DataError(f"{checkpoint}: cannot load the weights ({str(err).splitlines()[0]})") from None
            model.eval()
            return model, base, tokenizer
        raise DataError(f"{checkpoint}: neither an adapter (adapter_config.json) nor weights (config.json)")

    def evaluate(self, checkpoint: Path | None, step: int) -> dict[str, Any]:
        """Sample, score and estimate the KL of one checkpoint (None = the initial policy); the eval record."""
        import contextlib

        from rollout.transformers_engine import TransformersEngine

        start = time.perf_counter()
        model, reference, tokenizer = self._policy(checkpoint)
        settings, rollout = self.settings, self.recipe.rollout
        params = rollout.sampling_params(n=settings.samples, seed=settings.seed)
        engine = TransformersEngine(model, tokenizer, batch_size=settings.batch_size)
        groups = engine.generate(self.prompts, params)
        samples = [s for group in groups for s in group]
        prompts = [p for p in self.prompts for _ in range(settings.samples)]
        completions: list[Any] = [
            s.text if isinstance(p, str) else [{"role": "assistant", "content": s.text}]
            for p, s in zip(prompts, samples)
        ]
        columns = {k: [v for v in values for _ in range(settings.samples)] for k, values in self.columns.items()}
        columns["completion_ids"] = [s.completion_ids for s in samples]
        result = self.composer.score(prompts, completions, **columns)
        objectives = summarise_scores(result.matrix, self.composer.names)
        for name in self.composer.names:
            objectives[name]["failures"] = int(result.failures.get(name, 0))
            objectives[name]["masked"] = int(result.masked.get(name, 0))
        gold: dict[str, Any] = {}
        if self.gold is not None:
            gold_result = self.gold.score(prompts, completions, **columns)
            gold = summarise_scores(gold_result.matrix, self.gold.names)
            for name in self.gold.names:
                gold[name]["failures"] = int(gold_result.failures.get(name, 0))
                gold[name]["masked"] = int(gold_result.masked.get(name, 0))
        pairs = [(s.prompt_ids, s.completion_ids) for s in samples]
        pad_id = tokenizer.pad_token_id
        if reference is model:
            kl = {"sequence": 0.0, "token": 0.0}
        else:
            policy_logps = completion_logprobs(model, pairs, pad_id, settings.batch_size)
            disable = model.disable_adapter() if reference is None else contextlib.nullcontext()
            with disable:
                ref_logps = completion_logprobs(reference or model, pairs, pad_id, settings.batch_size)
            kl = kl_estimate(policy_logps, ref_logps)
        return {
            "format": EVAL_FORMAT,
            "step": int(step),
            "checkpoint": None if checkpoint is None else checkpoint.name,
            "names": list(self.composer.names),
            "objectives": objectives,
            "gold": gold,
            "kl": kl,
            "completion_tokens": float(np.mean([len(s.completion_ids) for s in samples])) if samples else math.nan,
            "eval_data": str(settings.eval_data),
            "prompts": len(self.prompts),
            "samples_per_prompt": settings.samples,
            "seed": settings.seed,
            "sampling": {
                "temperature": rollout.temperature,
                "top_p": rollout.top_p,
                "top_k": rollout.top_k,
                "max_tokens": rollout.max_new_tokens,
            },
            "seconds": time.perf_counter() - start,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }


def resolve_eval_data(recipe: Any, eval_data: str | None) -> str:
    """The held-out prompt set: `eval_data` if given (``builtin:`` names allowed), else the recipe's data.eval."""
    from alignment.recipes.paths import resolve_path

    if eval_data is not None:
        return resolve_path(eval_data, None, "--eval-data")
    if recipe.data.eval:
        return resolve_path(recipe.data.eval, None, "data.eval")
    raise ConfigError(
        "data.eval: the run's recipe names no held-out prompt set; pass --eval-data "
        "(e.g. --eval-data builtin:quickstart_eval_prompts.jsonl) or set data.eval in the recipe"
    )


def evaluate_run(
    run_dir: str | Path,
    eval_data: str | None = None,
    *,
    max_prompts: int | None = None,
    samples: int = 4,
    seed: int = DEFAULT_SEED,
    intermediate: bool = False,
    include_base: bool = False,
    overwrite: bool = False,
    log: Any = print,
) -> list[Path]:
    """Evaluate a run's final complete checkpoint (all of them with `intermediate`, plus the initial policy as
    step 0 with `include_base`) and write RUN_DIR/eval/step-<N>.json for each; returns the files written.

    Steps whose file already exists are kept unless `overwrite`. Raises ConfigError/DataError on bad input
    (no config.yaml, no complete checkpoint, no held-out prompts).
    """
    import torch

    from alignment.io import atomic_write_json
    from alignment.learners.checkpointing import checkpoint_step, complete_checkpoints
    from alignment.outputs import is_run_folder

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder does not exist")
    if not is_run_folder(run_dir):
        raise DataError(
            f"{run_dir}: not a run folder made by align train (no align-folder.json marker); evaluations are "
            "written only into run folders"
        )
    recipe = recipe_from_run(run_dir)
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        raise DataError(f"{run_dir}: no complete checkpoint to evaluate (was the run killed before its first save?)")
    targets: list[tuple[Path | None, int]] = [(c, checkpoint_step(c)) for c in checkpoints]
    if not intermediate:
        targets = targets[-1:]
    if include_base:
        targets.insert(0, (None, 0))
    if not overwrite:
        targets = [(c, s) for c, s in targets if not eval_file(run_dir, s).is_file()]
    if not targets:
        return []
    if recipe.train.torch_threads:
        torch.set_num_threads(recipe.train.torch_threads)
    settings = EvalSettings(
        eval_data=resolve_eval_data(recipe, eval_data),
        max_prompts=max_prompts,
        samples=samples,
        seed=seed,
        batch_size=recipe.rollout.batch_size,
    )
    evaluator = CheckpointEvaluator(recipe, settings)
    evaluator.check_prompts()
    written = []
    for checkpoint, step in targets:
        record = evaluator.evaluate(checkpoint, step)
        path = eval_file(run_dir, step)
        atomic_write_json(path, record)
        scores = ", ".join(f"{k} {v['mean']:.3f}" for k, v in {**record["objectives"], **record["gold"]}.items())
        log(f"{run_dir.name} step {step}: {scores}, KL {record['kl']['sequence']:.3f} ({record['seconds']:.1f}s)")
        written.append(path)
    return written
