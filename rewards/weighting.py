"""Weighting strategies: how the K objectives' weights are chosen each step.

Every strategy follows one small protocol: `weights()` gives the current w[K]; `update(matrix, **context)`
sees the step's per-objective reward matrix R[N, K] (gathered over all processes, NaN = not applicable) and
whatever else the learner hands it, and sets the weights for the next step; `state_dict()` /
`load_state_dict()` carry the strategy's state through checkpoints. Strategies are deterministic given the
same inputs, so every rank computes the same weights from the same gathered matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rewards.errors import RewardConfigError


class WeightingStrategy(Protocol):
    """The protocol every weighting strategy implements (see the module docstring)."""

    name: str

    def weights(self) -> np.ndarray: ...

    def update(self, matrix: np.ndarray, **context: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StaticWeights:
    """Fixed linear scalarisation: w never changes."""

    name = "static"

    def __init__(self, weights: Sequence[float]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0:
            raise RewardConfigError(f"static weights must be a non-empty list, got {list(weights)!r}")
        if not np.all(np.isfinite(w)):
            raise RewardConfigError(f"static weights must be finite numbers, got {w.tolist()}")
        self._w = w

    def weights(self) -> np.ndarray:
        return self._w.copy()

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        if matrix.shape[1] != self._w.size:
            raise RewardConfigError(f"reward matrix has {matrix.shape[1]} objectives but {self._w.size} weights")

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self._w.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = np.asarray(state["weights"], dtype=np.float64)
        if w.shape != self._w.shape:
            raise RewardConfigError(f"saved weights have {w.size} entries, this composer has {self._w.size}")
        self._w = w
