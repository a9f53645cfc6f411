"""Static weighting: fixed linear scalarisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.errors import RewardConfigError


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
