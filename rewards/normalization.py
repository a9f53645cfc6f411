"""Turning composite rewards into advantages: group, batch, none, and decoupled per-objective (GDPO).

All functions take NumPy arrays, treat NaN as "not applicable", and return float64 arrays. Group statistics
assume rows are ordered group by group: rows [g*G, (g+1)*G) share a prompt. Standard deviations use Bessel's
correction (as TRL's `nanstd`), and `eps` = 1e-4 is added to the std as TRL does.
"""

from __future__ import annotations

import warnings

import numpy as np

EPS = 1e-4


def _grouped(x: np.ndarray, group_size: int) -> np.ndarray:
    if group_size < 1 or x.shape[0] % group_size != 0:
        raise ValueError(f"{x.shape[0]} rows do not split into groups of {group_size}")
    return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])


def nanstd(x: np.ndarray, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    """Bessel-corrected std ignoring NaN; NaN where fewer than two values are present."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        count = np.sum(~np.isnan(x), axis=axis, keepdims=keepdims)
        std = np.nanstd(x, axis=axis, keepdims=keepdims, ddof=0)
        corrected = std * np.sqrt(np.where(count > 1, count / np.maximum(count - 1, 1), np.nan))
    return corrected


def _nanmean(x: np.ndarray, axis: int | None = None, keepdims: bool = False) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis, keepdims=keepdims)


def weighted_sum(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Composite reward c[N] = sum_k w_k R[N, k], skipping NaN entries; NaN where a row is all NaN.

    Same as TRL's `sum_then_normalize` aggregation before normalisation.
    """
    all_nan = np.isnan(matrix).all(axis=1)
    composite = np.nansum(matrix * weights[None, :], axis=1)
    composite[all_nan] = np.nan
    return composite


def group_advantages(rewards: np.ndarray, group_size: int, scale: str = "group", eps: float = EPS) -> np.ndarray:
    """GRPO advantages A_i = (r_i - mean_group) / (std + eps) (Shao et al., 2024), rewards [N] -> [N].

    scale: "group" divides by the group's std, "batch" by the whole batch's std (TRL scale_rewards="batch"),
    "none" only centres (Dr. GRPO). NaN rewards are left out of the statistics and get advantage 0.
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - _nanmean(grouped, axis=1, keepdims=True)
    if scale == "group":
        std = nanstd(grouped, axis=1, keepdims=True)
        std = np.where(np.isnan(std), 0.0, std)
        centred = centred / (std + eps)
    elif scale == "batch":
        std = nanstd(rewards)
        centred = centred / ((0.0 if np.isnan(std) else std) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; choose group, batch or none")
    return np.nan_to_num(centred.reshape(-1), nan=0.0)


def decoupled_advantages(matrix: np.ndarray, weights: np.ndarray, group_size: int, eps: float = EPS) -> np.ndarray:
    """GDPO decoupled normalisation (arXiv 2601.05242), R[N, K] -> A[N].

    Per objective, z-score within the group: A_k = (r_k - mean_g) / (std_g + eps); A = sum_k w_k A_k
    (NaN entries skipped); then batch-normalise A. Equals TRL's multi_objective_aggregation="normalize_then_sum".
    """
    grouped = _grouped(matrix, group_size)
    mean_k = _nanmean(grouped, axis=1, keepdims=True)
    std_k = nanstd(grouped, axis=1, keepdims=True) if group_size > 1 else np.zeros_like(mean_k)
    per_objective = ((grouped - mean_k) / (std_k + eps)).reshape(matrix.shape)
    combined = weighted_sum(per_objective, weights)
    std = nanstd(combined)
    advantages = (combined - _nanmean(combined)) / ((0.0 if np.isnan(std) else std) + eps)
    return np.nan_to_num(advantages, nan=0.0)


def objective_advantages(matrix: np.ndarray, group_size: int, scale: str = "group", eps: float = EPS) -> np.ndarray:
    """Per-objective GRPO advantages: each column of R[N, K] normalised alone -> A[N, K].

    Column k equals ``group_advantages(matrix[:, k], group_size, scale)`` ("group", "batch" or "none"); with
    scale "decoupled" each column is z-scored within its group as GDPO does before summing (same as "group").
    These are the A_k of the Lagrangian mix (Moskovitz et al., 2024) and of the gradient-based weighting's
    per-objective gradients (Lu et al., arXiv 2509.11452). NaN entries get advantage 0.
    """
    if matrix.ndim != 2:
        raise ValueError(f"expected a reward matrix [N, K], got shape {matrix.shape}")
    grouped = _grouped(matrix, group_size)
    centred = grouped - _nanmean(grouped, axis=1, keepdims=True)
    if scale in ("group", "decoupled"):
        std = nanstd(grouped, axis=1, keepdims=True)
        std = np.where(np.isnan(std), 0.0, std)
        centred = centred / (std + eps)
    elif scale == "batch":
        std = nanstd(matrix, axis=0)
        centred = centred / (np.where(np.isnan(std), 0.0, std) + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}; choose group, batch, none or decoupled")
    return np.nan_to_num(centred.reshape(matrix.shape), nan=0.0)
