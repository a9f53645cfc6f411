"""Held-out passes during GRPO training: the policy as it stands, scored by the composer on held-out prompts.

What hypervolume-guided weighting with ``source: eval`` measures (Lu et al., arXiv 2509.11452: a validation pass
before training and after every update gives the point p_t that grows the Pareto buffer). The prompts come from
``rewards.weighting.eval.prompts`` (default ``data.eval``); each process generates for its share of them and the
per-objective sums and counts are added up over processes, so every rank gets the same point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignment.recipes.prompt_data import load_prompts
from alignment.recipes.recipe import Recipe
from rewards.composer import RewardComposer
from rollout.base import Prompt, Sample, SamplingParams


@dataclass
class HeldOutSet:
    """Held-out prompts [P], their other columns (which reach the reward components), and how to sample them."""

    prompts: list[Prompt]
    columns: dict[str, list[Any]]
    params: SamplingParams

    def share(self, rank: int, world_size: int) -> tuple[list[Prompt], dict[str, list[Any]]]:
        """This process's prompts (every world_size-th from `rank`), each repeated `params.n` times, with columns."""
        picked = list(range(rank, len(self.prompts), world_size))
        n = self.params.n
        prompts = [self.prompts[i] for i in picked for _ in range(n)]
        columns = {key: [values[i] for i in picked for _ in range(n)] for key, values in self.columns.items()}
        return prompts, columns


def load_heldout(recipe: Recipe) -> HeldOutSet:
    """The recipe's held-out set for weighting (`rewards.weighting.eval`); DataError names a bad file."""
    settings = recipe.rewards.weighting.eval
    path = settings.prompts or recipe.data.eval
    assert path is not None, "Recipe.validate requires held-out prompts when a strategy asks for them"
    dataset = load_prompts(path, recipe.data.prompt_column, settings.max_prompts)
    rows = [dict(row) for row in dataset]
    prompts = [row.pop("prompt") for row in rows]
    columns = {key: [row.get(key) for row in rows] for key in (rows[0] if rows else {})}
    rollout = recipe.rollout
    params = SamplingParams(
        n=settings.samples,
        temperature=rollout.temperature,
        top_p=1.0 if settings.greedy else rollout.top_p,
        top_k=1 if settings.greedy else rollout.top_k,
        max_tokens=settings.max_new_tokens or rollout.max_new_tokens,
        stop=tuple(rollout.stop),
        seed=None,
    )
    return HeldOutSet(prompts=prompts, columns=columns, params=params)


def completions_of(prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Any]:
    """The completions in the prompts' format: text for a text prompt, one assistant message for a conversation."""
    return [
        s.text if isinstance(p, str) else [{"role": "assistant", "content": s.text}] for p, s in zip(prompts, samples)
    ]


def score_sums(
    composer: RewardComposer, prompts: Sequence[Prompt], samples: Sequence[Sample], columns: dict[str, list[Any]]
) -> np.ndarray:
    """Per-objective [2, K]: the sums of the scores and how many rows had one (NaN = not applicable, skipped)."""
    k = len(composer.objectives)
    if not samples:
        return np.zeros((2, k))
    scored = dict(columns)
    scored["completion_ids"] = [s.completion_ids for s in samples]
    matrix = composer.score(list(prompts), completions_of(prompts, samples), **scored).matrix
    valid = ~np.isnan(matrix)
    return np.stack([np.where(valid, matrix, 0.0).sum(axis=0), valid.sum(axis=0).astype(np.float64)])


def point_from_sums(sums: np.ndarray) -> np.ndarray:
    """p [K] = sums / counts from the [2, K] totals over processes; NaN where an objective had no value."""
    total, count = sums
    return np.array([t / c if c > 0 else math.nan for t, c in zip(total, count)])
