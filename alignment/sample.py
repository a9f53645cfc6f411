"""`align sample`: on-policy preference pairs. n completions per prompt from the rollout worker, scored by a
reward composer; every sample is written with its per-objective scores, and TRL preference rows are built.

    align sample --model PATH --prompts FILE --n 8 --reward SPEC --out pairs.jsonl [--pairs best-worst|all]

Pairs (`--pairs`): `best-worst` (default) takes, per prompt, the completion with the highest composite reward as
`chosen` and the lowest as `rejected`; `all` takes every pair of completions whose composites differ (the
higher one chosen). Ties (equal composites, or identical texts) are skipped and counted; completions no
objective could score (NaN composite) or with no text take part in no pair (counted too). The composite is the
composer's weighted sum of its objectives (the `rewards` section's weights). Rows are TRL's preference format
(`prompt`, `chosen`, `rejected`; conversational when the prompts are chat messages) plus `score_chosen`/
`score_rejected` (composite), `scores_chosen`/`scores_rejected` (per objective) and `prompt_index`.

`sample_pairs(...)` is the same in-process (the iterative recipe calls it between preference epochs).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from alignment.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rewards.composer import RewardComposer
    from rollout.base import SamplingParams

HELP = "sample n completions per prompt, score them with a reward composer, write samples and preference pairs"

PairMode = Literal["best-worst", "all"]
PAIR_MODES = ("best-worst", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags (heavy imports stay in `run`)."""
    parser.add_argument("--model", help="local model folder, PEFT adapter folder (e.g. a run checkpoint) or builtin:")
    parser.add_argument("--prompts", required=True, help="prompt dataset (JSONL/JSON/Parquet/datasets folder)")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt (default 8)")
    parser.add_argument("--reward", required=True, help="component name, module:function, reward-model folder or YAML")
    parser.add_argument("--out", required=True, help="where to write the preference pairs (JSONL)")
    parser.add_argument("--pairs", choices=PAIR_MODES, default="best-worst", help="which pairs to build per prompt")
    parser.add_argument("--samples-out", default=None, help="where to write every sample (default: OUT.samples.jsonl)")
    parser.add_argument("--prompt-column", default="prompt", help="the prompt field of the dataset rows")
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens per completion")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--server-url", default=None, help="generate on `align serve-rollout` at http://host:port")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (transformers)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt budget (default: context - max)")
    parser.add_argument("--prompt-truncation", choices=("left", "error"), default="left")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--vllm-options", default=None, help='vLLM: LLM(...) settings as JSON, e.g. {"enforce_eager": true}'
    )


def vllm_options(text: str | None) -> dict[str, Any]:
    """`--vllm-options` JSON as a dict; ConfigError when it is not a JSON object."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--vllm-options: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--vllm-options: expected a JSON object, got {type(value).__name__}")
    return value


def _check_args(args: argparse.Namespace) -> None:
    if not args.model and not args.server_url:
        raise ConfigError("--model: give a model folder (or --server-url of a running `align serve-rollout`)")
    positive = {"--n": args.n, "--max-tokens": args.max_tokens, "--batch-size": args.batch_size}
    positive.update({"--max-rows": args.max_rows, "--max-prompt-tokens": args.max_prompt_tokens})
    positive["--threads"] = args.threads
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be a positive integer, got {value}")
    if args.n < 2:
        raise ConfigError(f"--n: pairs need at least 2 completions per prompt, got {args.n}")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature: must be > 0, got {args.temperature}")
    if args.engine == "vllm" and not args.server_url and args.temperature > 2:
        raise ConfigError(f"--temperature: must be <= 2 with --engine vllm, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise ConfigError(f"--top-k: must be >= 0 (0 = off), got {args.top_k}")
    if args.server_url:
        from rollout.remote_engine import parse_server_url

        try:
            parse_server_url(args.server_url)
        except ValueError as err:
            raise ConfigError(f"--server-url: {err}") from None


def _completion(prompt: Any, text: str) -> Any:
    """A completion in the prompt's format: text for a standard prompt, one assistant message for a chat."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def build_pair_rows(
    prompt: Any,
    completions: Sequence[Any],
    composite: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    mode: PairMode = "best-worst",
    prompt_index: int = 0,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """TRL preference rows for one prompt's completions, and counts of what was skipped.

    composite [n] (NaN = unscored), scores [n, K]. best-worst: one row (highest vs lowest composite; the first
    of equal maxima/minima), none when the two are tied or fewer than two completions are scored. all: every
    pair with different composites and different texts, the higher one chosen. Completions with no text or a
    NaN composite take part in no pair. Skips are counted under `ties` (equal composites), `identical` (equal
    texts), `unscored` (NaN composites) and `empty` (completions with no text, which TRL-format readers drop).
    """
    from rewards.text import completion_text

    skipped: Counter[str] = Counter()
    scored = [i for i in range(len(completions)) if math.isfinite(float(composite[i]))]
    skipped["unscored"] += len(completions) - len(scored)
    valid = [i for i in scored if completion_text(completions[i]).strip()]
    skipped["empty"] += len(scored) - len(valid)
    if mode == "best-worst":
        if len(valid) < 2:
            return [], +skipped
        best = max(valid, key=lambda i: (composite[i], -i))
        worst = min(valid, key=lambda i: (composite[i], i))
        candidates = [(best, worst)]
    elif mode == "all":
        candidates = [(i, j) for a, i in enumerate(valid) for j in valid[a + 1 :]]
    else:
        raise ValueError(f"pairs must be one of {PAIR_MODES}, got {mode!r}")
    rows = []
    for i, j in candidates:
        if composite[i] == composite[j]:
            skipped["ties"] += 1
            continue
        chosen, rejected = (i, j) if composite[i] > composite[j] else (j, i)
        if completions[chosen] == completions[rejected]:
            skipped["identical"] += 1
            continue
        rows.append(
            {
                "prompt": prompt,
                "chosen": completions[chosen],
                "rejected": completions[rejected],
                "score_chosen": float(composite[chosen]),
                "score_rejected": float(composite[rejected]),
                "scores_chosen": {n: _finite(scores[chosen, k]) for k, n in enumerate(names)},
                "scores_rejected": {n: _finite(scores[rejected, k]) for k, n in enumerate(names)},
                "prompt_index": prompt_index,
            }
        )
    return rows, +skipped  # without zero counts


def sample_pairs(
    model: Any,
    tokenizer: Any | None,
    prompts: Sequence[Any],
    composer: RewardComposer,
    n: int,
    params: SamplingParams,
    pairs: PairMode = "best-worst",
    *,
    columns: Mapping[str, Sequence[Any]] | None = None,
    batch_size: int = 64,
    max_prompt_tokens: int | None = None,
    prompt_truncation: Literal["left", "error"] = "left",
    prompts_per_call: int | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Sample `n` completions per prompt, score them with `composer`, build preference rows.

    `model` is a causal LM generated with the transformers engine (with `tokenizer`, `batch_size` and the prompt
    policy `max_prompt_tokens` / `prompt_truncation`, as in a recipe's rollout section), or any rollout engine
    (then `tokenizer` is None and the engine's own settings apply). `params` are `rollout.base.SamplingParams`
    (their `n` is replaced by `n`; with a seed, each generate call uses seed + its index). `columns` holds extra
    per-prompt columns the reward components read (e.g. `reference`).

    Returns (samples, pair rows, stats): one dict per sample with its per-objective `scores` and `composite`,
    the TRL rows (see `build_pair_rows`), and counts and timings. Raises rollout.base.PromptTooLongError
    (prompt_truncation error) and the composer's errors.
    """
    import dataclasses

    from tqdm.auto import tqdm

    if n < 2:
        raise ValueError(f"n must be >= 2 to build pairs, got {n}")
    if pairs not in PAIR_MODES:
        raise ValueError(f"pairs must be one of {PAIR_MODES}, got {pairs!r}")
    if tokenizer is not None:
        from rollout.transformers_engine import TransformersEngine

        engine = TransformersEngine(
            model,
            tokenizer,
            batch_size=batch_size,
            max_prompt_tokens=max_prompt_tokens,
            prompt_truncation=prompt_truncation,
        )
    else:
        engine = model
    columns = {k: list(v) for k, v in (columns or {}).items()}
    for key, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"column {key!r} has {len(values)} values for {len(prompts)} prompts")
    if prompts_per_call is None:
        in_process = getattr(engine, "name", "") == "transformers"  # batches of batch_size sequences
        prompts_per_call = max(1, (batch_size if in_process else 1024) // n)
    names = composer.names
    samples: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    finish: Counter[str] = Counter()
    gen_seconds = score_seconds = 0.0
    tokens = 0
    truncated_before = getattr(engine, "truncated_prompts", 0)
    starts = range(0, len(prompts), prompts_per_call)
    for call, start in enumerate(tqdm(starts, desc="sampling", unit="call", disable=not progress or len(starts) < 2)):
        chunk = list(prompts[start : start + prompts_per_call])
        seed = None if params.seed is None else params.seed + call
        t0 = time.perf_counter()
        groups = engine.generate(chunk, dataclasses.replace(params, n=n, seed=seed))
        gen_seconds += time.perf_counter() - t0
        flat_prompts = [p for p in chunk for _ in range(n)]
        completions = [_completion(p, s.text) for p, group in zip(chunk, groups) for s in group]
        flat_columns = {
            k: [v for v in values[start : start + len(chunk)] for _ in range(n)] for k, values in columns.items()
        }
        t0 = time.perf_counter()
        result = composer.score(flat_prompts, completions, **flat_columns)
        composite = composer.compose(result.matrix, group_size=n).rewards
        score_seconds += time.perf_counter() - t0
        failures.update(result.failures)
        for offset, (prompt, group) in enumerate(zip(chunk, groups)):
            index = start + offset
            block = slice(offset * n, (offset + 1) * n)
            for j, sample in enumerate(group):
                row = offset * n + j
                tokens += len(sample.completion_ids)
                finish[sample.finish_reason] += 1
                samples.append(
                    {
                        "prompt_index": index,
                        "sample_index": j,
                        "prompt": prompt,
                        "completion": completions[row],
                        "scores": {name: _finite(result.matrix[row, k]) for k, name in enumerate(names)},
                        "composite": _finite(composite[row]),
                        "finish_reason": sample.finish_reason,
                        "completion_tokens": len(sample.completion_ids),
                        "logprob_sum": float(sum(sample.logprobs)),
                    }
                )
            group_rows, group_skipped = build_pair_rows(
                prompt, completions[block], composite[block], result.matrix[block], names, pairs, index
            )
            rows.extend(group_rows)
            skipped.update(group_skipped)
    composites = np.array([s["composite"] if s["composite"] is not None else np.nan for s in samples], dtype=float)
    with np.errstate(all="ignore"):
        mean_scores = {
            name: _finite(
                float(np.nanmean([s["scores"][name] if s["scores"][name] is not None else np.nan for s in samples]))
            )
            for name in names
        }
        mean_composite = _finite(float(np.nanmean(composites))) if np.isfinite(composites).any() else None
    stats = {
        "prompts": len(prompts),
        "samples": len(samples),
        "pairs": len(rows),
        "pair_mode": pairs,
        "skipped": {k: skipped.get(k, 0) for k in ("ties", "identical", "unscored", "empty")},
        "prompts_without_pair": len(prompts) - len({r["prompt_index"] for r in rows}),
        "failures": {name: failures.get(name, 0) for name in names},
        "finish_reasons": dict(finish),
        "engine": getattr(engine, "name", type(engine).__name__),
        "truncated_prompts": getattr(engine, "truncated_prompts", 0) - truncated_before,
        "completion_tokens": tokens,
        "generation_seconds": gen_seconds,
        "scoring_seconds": score_seconds,
        "tokens_per_second": tokens / gen_seconds if gen_seconds > 0 else None,
        "mean_composite": mean_composite,
        "mean_scores": mean_scores,
        "weights": dict(zip(names, [float(w) for w in composer.weighting.weights()])),
    }
    return samples, rows, stats


def _samples_path(out: Path, samples_out: str | None) -> Path:
    if samples_out:
        return Path(samples_out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.samples.jsonl")


def _engine(args: argparse.Namespace) -> Any:
    from rollout.base import RolloutServerError
    from rollout.factory import build_standalone_engine
    from rollout.loading import ModelLoadError

    if args.server_url:
        from rollout.remote_engine import RemoteEngine

        engine = RemoteEngine(args.server_url)
        try:
            engine.health()
        except RolloutServerError as err:
            raise ConfigError(f"--server-url: {err}") from None
        return engine
    from alignment.config import resolve_path

    model_path = resolve_path(args.model, None, "--model")
    try:
        return build_standalone_engine(
            args.engine,
            model_path,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_prompt_tokens=args.max_prompt_tokens,
            prompt_truncation=args.prompt_truncation,
            seed=args.seed,
            vllm_options=vllm_options(getattr(args, "vllm_options", None)),
        )
    except ModelLoadError as err:
        raise ConfigError(f"--model: {err}") from None
    except ValueError as err:  # settings the engine cannot run with
        raise ConfigError(f"--engine {args.engine}: {err}") from None


def run(args: argparse.Namespace) -> int:
    """Sample, score, write samples and pairs; print a summary. Bad input raises ConfigError/DataError."""
    _check_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from alignment.config import resolve_path
    from alignment.data import load_prompts
    from alignment.eval_rm import composer_from_spec
    from alignment.io import atomic_write_json, atomic_write_jsonl
    from rollout.base import PromptTooLongError, RolloutServerError, SamplingParams

    composer = composer_from_spec(args.reward)
    prompts_path = resolve_path(args.prompts, None, "--prompts")
    rows = load_prompts(prompts_path, args.prompt_column, args.max_rows).to_list()
    prompts = [row["prompt"] for row in rows]
    columns = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"}
    engine = _engine(args)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    try:
        samples, pair_rows, stats = sample_pairs(
            engine, None, prompts, composer, args.n, params, args.pairs, columns=columns, batch_size=args.batch_size
        )
    except PromptTooLongError as err:
        raise DataError(f"{args.prompts}: {err}") from None
    except RolloutServerError as err:
        raise ConfigError(f"--server-url: {err}") from None
    out = Path(args.out)
    samples_out = _samples_path(out, args.samples_out)
    atomic_write_jsonl(samples_out, samples)
    atomic_write_jsonl(out, pair_rows)
    stats_out = out.with_name(f"{out.name[: -len('.jsonl')] if out.name.endswith('.jsonl') else out.name}.stats.json")
    stats.update({"model": args.model, "server_url": args.server_url, "reward": args.reward, "n": args.n})
    atomic_write_json(stats_out, stats)
    skipped = stats["skipped"]
    print(
        f"{stats['samples']} samples from {stats['prompts']} prompts ({stats['completion_tokens']} tokens, "
        f"{stats['tokens_per_second'] or 0:.0f} tokens/s); {stats['pairs']} pairs ({args.pairs}), skipped "
        f"{skipped['ties']} ties, {skipped['identical']} identical; {skipped['unscored']} unscored and "
        f"{skipped['empty']} empty samples left out; {stats['truncated_prompts']} prompts truncated"
    )
    means = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in stats["mean_scores"].items())
    composite = stats["mean_composite"]
    print(f"mean composite {'-' if composite is None else f'{composite:.3f}'}; per objective: {means}")
    print(f"pairs:   {out}\nsamples: {samples_out}\nstats:   {stats_out}")
    return 0
