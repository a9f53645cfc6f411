"""On-policy preference pairs: n completions per prompt from the rollout worker, scored by a reward composer;
every sample is kept with its per-objective scores, and TRL preference rows are built (`align sample`, and the
iterative recipe between preference rounds).

Pairs: `best-worst` (default) takes, per prompt, the completion with the highest composite reward as
`chosen` and the lowest as `rejected`; `all` takes every pair of completions whose composites differ (the
higher one chosen). Ties (equal composites, or identical texts) are skipped and counted; completions no
objective could score (NaN composite) or with no text take part in no pair (counted too). The composite is the
composer's weighted sum of its objectives (the `rewards` section's weights). Rows are TRL's preference format
(`prompt`, `chosen`, `rejected`; conversational when the prompts are chat messages) plus `score_chosen`/
`score_rejected` (composite), `scores_chosen`/`scores_rejected` (per objective) and `prompt_index`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from rewards.composer import RewardComposer
    from rollout.base import SamplingParams

PairMode = Literal["best-worst", "all"]
PAIR_MODES = ("best-worst", "all")


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


@dataclass
class SampledShard:
    """What one process sampled (the calls `call % world == rank` of `sample_shard`): its samples and pair rows in
    prompt order, and the counts and timings `merge_shards` adds up. Plain data, so it can be pickled to the
    other processes."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0
    completion_tokens: int = 0
    truncated_prompts: int = 0
    engine: str = ""


def sample_shard(
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
    shard: tuple[int, int] = (0, 1),
) -> SampledShard:
    """One process's share of `sample_pairs` (same arguments; see there): the prompts are cut into generate calls
    of `prompts_per_call` prompts, call c seeded `params.seed + c`, and this process (`shard` = (rank, world))
    runs the calls with c % world == rank. The calls, their prompts and seeds do not depend on `world`, so the
    shards of any number of processes, merged (`merge_shards`), hold what one process samples alone (on the same
    kernels); a process with no call left (fewer calls than processes) returns an empty shard.
    """
    import dataclasses

    from tqdm.auto import tqdm

    rank, world = shard
    if n < 2:
        raise ValueError(f"n must be >= 2 to build pairs, got {n}")
    if pairs not in PAIR_MODES:
        raise ValueError(f"pairs must be one of {PAIR_MODES}, got {pairs!r}")
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
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
    out = SampledShard(engine=getattr(engine, "name", type(engine).__name__))
    truncated_before = getattr(engine, "truncated_prompts", 0)
    calls = [(c, start) for c, start in enumerate(range(0, len(prompts), prompts_per_call)) if c % world == rank]
    for call, start in tqdm(calls, desc="sampling", unit="call", disable=not progress or len(calls) < 2):
        chunk = list(prompts[start : start + prompts_per_call])
        seed = None if params.seed is None else params.seed + call
        t0 = time.perf_counter()
        groups = engine.generate(chunk, dataclasses.replace(params, n=n, seed=seed))
        out.generation_seconds += time.perf_counter() - t0
        flat_prompts = [p for p in chunk for _ in range(n)]
        completions = [_completion(p, s.text) for p, group in zip(chunk, groups) for s in group]
        flat_columns = {
            k: [v for v in values[start : start + len(chunk)] for _ in range(n)] for k, values in columns.items()
        }
        t0 = time.perf_counter()
        result = composer.score(flat_prompts, completions, **flat_columns)
        composite = composer.compose(result.matrix, group_size=n).rewards
        out.scoring_seconds += time.perf_counter() - t0
        out.failures.update(result.failures)
        for offset, (prompt, group) in enumerate(zip(chunk, groups)):
            index = start + offset
            block = slice(offset * n, (offset + 1) * n)
            for j, sample in enumerate(group):
                row = offset * n + j
                out.completion_tokens += len(sample.completion_ids)
                out.finish_reasons[sample.finish_reason] += 1
                out.samples.append(
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
            out.rows.extend(group_rows)
            out.skipped.update(group_skipped)
    out.truncated_prompts = getattr(engine, "truncated_prompts", 0) - truncated_before
    return out


def merge_shards(
    shards: Sequence[SampledShard], prompts: int, composer: RewardComposer, pairs: PairMode = "best-worst"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(samples, pair rows, stats) of `prompts` prompts from the shards of every process (see `sample_pairs`).

    Samples come out ordered by (prompt, sample) and rows by prompt (each prompt's rows in the order they were
    built), as one process writes them. Counts add up; `generation_seconds` / `scoring_seconds` are the slowest
    shard's (the wall time the processes took together) and `tokens_per_second` is every shard's tokens over it.
    """
    names = composer.names
    samples = sorted(
        (s for shard in shards for s in shard.samples), key=lambda s: (s["prompt_index"], s["sample_index"])
    )
    rows = sorted((r for shard in shards for r in shard.rows), key=lambda r: r["prompt_index"])  # stable
    skipped: Counter[str] = sum((shard.skipped for shard in shards), Counter())
    failures: Counter[str] = sum((shard.failures for shard in shards), Counter())
    finish: Counter[str] = sum((shard.finish_reasons for shard in shards), Counter())
    gen_seconds = max((shard.generation_seconds for shard in shards), default=0.0)
    score_seconds = max((shard.scoring_seconds for shard in shards), default=0.0)
    tokens = sum(shard.completion_tokens for shard in shards)
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
        "prompts": prompts,
        "samples": len(samples),
        "pairs": len(rows),
        "pair_mode": pairs,
        "skipped": {k: skipped.get(k, 0) for k in ("ties", "identical", "unscored", "empty")},
        "prompts_without_pair": prompts - len({r["prompt_index"] for r in rows}),
        "failures": {name: failures.get(name, 0) for name in names},
        "finish_reasons": dict(finish),
        "engine": next((shard.engine for shard in shards if shard.engine), None),
        "truncated_prompts": sum(shard.truncated_prompts for shard in shards),
        "completion_tokens": tokens,
        "generation_seconds": gen_seconds,
        "scoring_seconds": score_seconds,
        "tokens_per_second": tokens / gen_seconds if gen_seconds > 0 else None,
        "mean_composite": mean_composite,
        "mean_scores": mean_scores,
        "weights": dict(zip(names, [float(w) for w in composer.weighting.weights()])),
    }
    return samples, rows, stats


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
    (prompt_truncation error) and the composer's errors. Several processes split the work with `sample_shard`
    and `merge_shards`.
    """
    shard = sample_shard(
        model, tokenizer, prompts, composer, n, params, pairs, columns=columns, batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens, prompt_truncation=prompt_truncation,
        prompts_per_call=prompts_per_call, progress=progress,
    )  # fmt: skip
    return merge_shards([shard], len(prompts), composer, pairs)
