"""The protocol every weighting strategy implements (its methods, optional hooks and call order are described
in the package docstring, :mod:`rewards.weighting`) and the small helpers the strategies share."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from rewards.errors import RewardConfigError


class WeightingStrategy(Protocol):
    """The protocol every weighting strategy implements (see the module docstring for the optional hooks)."""

    name: str

    def weights(self) -> np.ndarray: ...

    def update(self, matrix: np.ndarray, **context: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def to_numpy(value: Any, name: str) -> np.ndarray:
    """float64 array from a list, NumPy array or (without importing torch) a tensor on any device."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc


def nanmean_columns(matrix: np.ndarray) -> np.ndarray:
    """Per-column mean of R[N, K] ignoring NaN; NaN where a column has no value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(matrix, axis=0) if matrix.shape[0] else np.full(matrix.shape[1], np.nan)


def check_matrix(matrix: np.ndarray, k: int) -> None:
    if matrix.ndim != 2 or matrix.shape[1] != k:
        raise RewardConfigError(f"reward matrix has shape {matrix.shape}; this strategy has {k} objectives")


def finite_vector(values: Any, where: str, *, size: int | None = None) -> np.ndarray:
    try:
        w = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise RewardConfigError(f"{where}: must be a list of numbers, got {values!r}") from None
    if w.ndim != 1 or w.size == 0:
        raise RewardConfigError(f"{where}: must be a non-empty list of numbers, got {values!r}")
    if not np.all(np.isfinite(w)):
        raise RewardConfigError(f"{where}: must be finite numbers, got {w.tolist()}")
    if size is not None and w.size != size:
        raise RewardConfigError(f"{where}: needs {size} entries (one per objective), got {w.size}")
    return w


def load_vector(state: Mapping[str, Any], key: str, size: int) -> np.ndarray:
    w = np.asarray(state[key], dtype=np.float64)
    if w.shape != (size,):
        raise RewardConfigError(f"saved state {key!r} has {w.size} entries, this strategy has {size}")
    return w
