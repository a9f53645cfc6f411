"""The reward composer: K components -> R[N, K] -> weighted composite rewards and advantages.

Scoring (`score`) calls every component on a batch, turning a raised exception on a row, or a NaN/inf value,
into NaN (not applicable) for that row and objective and counting it; a component that fails on every row
stops with `RewardComponentError`. Composition (`compose`) weights the matrix with the current weights of the
weighting strategy and normalises it into advantages; `update` hands the step's matrix to the strategy so it
can move the weights for the next step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rewards.base import RewardComponent
from rewards.errors import RewardComponentError, RewardConfigError
from rewards.normalization import decoupled_advantages, group_advantages, weighted_sum
from rewards.weighting import StaticWeights, WeightingStrategy

Normalization = Literal["group", "batch", "none", "decoupled"]


@dataclass
class Objective:
    """One named objective of the composition."""

    name: str
    component: RewardComponent


@dataclass
class ScoreResult:
    """Per-objective scores of a batch: matrix R[N, K] (NaN = not applicable) and failure counts per objective."""

    matrix: np.ndarray
    failures: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Composition:
    """What a learner consumes for one step: composite rewards [N], advantages [N], the weights used [K]."""

    rewards: np.ndarray
    advantages: np.ndarray
    weights: np.ndarray


def _call_component(
    component: RewardComponent, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, Sequence[Any]]
) -> list[float | None]:
    values = component(list(prompts), list(completions), **columns)
    if not isinstance(values, list | tuple | np.ndarray):
        raise TypeError(f"returned {type(values).__name__}, expected a list of floats")
    if len(values) != len(completions):
        raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
    return list(values)


def _to_float(value: Any) -> float:
    if value is None:
        return math.nan
    number = float(value)
    return number if math.isfinite(number) else math.nan


class RewardComposer:
    """Composes K reward components into one training signal (see the module docstring)."""

    def __init__(
        self,
        objectives: Sequence[Objective],
        weighting: WeightingStrategy,
        normalization: Normalization = "group",
    ) -> None:
        if not objectives:
            raise RewardConfigError("a composer needs at least one objective")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise RewardConfigError(f"objective names must be unique, got {names}")
        if normalization not in ("group", "batch", "none", "decoupled"):
            raise RewardConfigError(
                f"normalization: {normalization!r} is not allowed; choose group, batch, none or decoupled"
            )
        if weighting.weights().shape != (len(objectives),):
            raise RewardConfigError(
                f"{len(objectives)} objectives ({', '.join(names)}) but {weighting.weights().size} weights"
            )
        self.objectives = list(objectives)
        self.weighting = weighting
        self.normalization: Normalization = normalization

    @classmethod
    def static(
        cls, components: Sequence[RewardComponent], weights: Sequence[float], normalization: Normalization = "group"
    ) -> RewardComposer:
        """A composer with fixed weights; objectives are named after their components."""
        objectives = [Objective(c.name, c) for c in components]
        return cls(objectives, StaticWeights(weights), normalization)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]) -> ScoreResult:
        """Score N completions with every objective: R[N, K] float64, NaN = not applicable or failed.

        A component that raises on the batch is retried row by row; rows that still raise become NaN and are
        counted in `failures`, as are NaN/inf values. If every row fails, RewardComponentError names the
        objective and the first error.
        """
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        matrix = np.full((n, len(self.objectives)), np.nan, dtype=np.float64)
        failures: dict[str, int] = {}
        seconds: dict[str, float] = {}
        for k, objective in enumerate(self.objectives):
            start = time.perf_counter()
            try:
                raw = _call_component(objective.component, prompts, completions, columns)
                values = [_to_float(v) for v in raw]
                failed = sum(1 for v in raw if v is not None and not math.isfinite(float(v)))
            except Exception as batch_error:  # noqa: BLE001 - any component error becomes per-row NaN
                values, failed, first_error = [], 0, batch_error
                for i in range(n):
                    row_columns = {key: [col[i]] for key, col in columns.items()}
                    try:
                        values.append(
                            _to_float(
                                _call_component(objective.component, [prompts[i]], [completions[i]], row_columns)[0]
                            )
                        )
                    except Exception as row_error:  # noqa: BLE001
                        values.append(math.nan)
                        failed += 1
                        first_error = row_error
                if n > 0 and failed == n:
                    raise RewardComponentError(
                        f"reward objective {objective.name!r} failed on all {n} rows: "
                        f"{type(first_error).__name__}: {first_error}"
                    ) from first_error
            matrix[:, k] = values
            failures[objective.name] = failed
            seconds[objective.name] = time.perf_counter() - start
        return ScoreResult(matrix=matrix, failures=failures, seconds=seconds)

    def compose(self, matrix: np.ndarray, group_size: int) -> Composition:
        """Composite rewards and advantages from R[N, K] with the current weights; rows grouped by prompt."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.objectives):
            raise ValueError(f"expected a reward matrix [N, {len(self.objectives)}], got shape {matrix.shape}")
        weights = self.weighting.weights()
        rewards = weighted_sum(matrix, weights)
        if self.normalization == "decoupled":
            advantages = decoupled_advantages(matrix, weights, group_size)
        else:
            advantages = group_advantages(rewards, group_size, scale=self.normalization)
        return Composition(rewards=rewards, advantages=advantages, weights=weights)

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        """Let the weighting strategy see this step's R[N, K] and set the weights for the next step."""
        self.weighting.update(matrix, **context)

    def state_dict(self) -> dict[str, Any]:
        """The composer's mutable state (the weighting strategy's), JSON-serialisable."""
        return {"objectives": self.names, "weighting": self.weighting.name, "state": self.weighting.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; objectives and strategy must match."""
        if state.get("objectives") != self.names or state.get("weighting") != self.weighting.name:
            raise RewardConfigError(
                f"saved composer state is for objectives {state.get('objectives')} with "
                f"{state.get('weighting')!r} weighting; this run has {self.names} with {self.weighting.name!r}"
            )
        self.weighting.load_state_dict(state["state"])
