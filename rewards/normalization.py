"""Turning composite rewards into advantages: group, batch, none, and decoupled per-objective (GDPO).

All functions take NumPy arrays, treat NaN as "not applicable", and return float64 arrays. Group statistics
assume rows are ordered group by group: rows [g*G, (g+1)*G) share a prompt. Standard deviations use Bessel's
correction (as TRL's `nanstd`), and `eps` = 1e-4 is added to the std as TRL does.

Overflow: any finite input is safe. Values whose squares would overflow float64 (|x| >= 2**400) are divided by
a power of two before the mean and std (per group, or per batch for batch scaling, and per objective) and eps
is divided by the same power, which changes no bit of the result; below that bound nothing is rescaled. A
weighted sum that overflows float64 (absurd weights) is NaN for that row, which then gets advantage 0 while the
other rows are normalised as usual. Infinite inputs are "not applicable" like NaN. (The composer already turns
component values beyond +-1e9 into counted failures; this is the second line of defence.)
"""

from __future__ import annotations

import warnings

import numpy as np

EPS = 1e-4
# Below this magnitude the squares in a std cannot overflow float64 (2**800 < 1.8e308): no rescaling at all.
_SAFE = 2.0**400


def _finite(x: np.ndarray) -> np.ndarray:
    """`x` as float64 with +-inf replaced by NaN (not applicable)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isinf(x), np.nan, x)


def _power_of_two_scale(x: np.ndarray, axis: int | tuple[int, ...] | None) -> np.ndarray | float:
    """1 where max |x| (over `axis`, NaN ignored) is below 2**400, else the power of two at or just above it
    (at most 2**1023).

    Dividing by a power of two is exact in floating point, so z-scores computed from x / s with eps / s equal
    the unscaled ones bit for bit whenever the unscaled computation does not overflow.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        peak = np.nanmax(np.abs(x), axis=axis, keepdims=axis is not None)
    peak = np.where(np.isnan(peak), 0.0, peak)
    if not np.any(peak >= _SAFE):
        return 1.0
    exponent = np.minimum(np.ceil(np.log2(np.maximum(peak, 1.0))), 1023.0)  # 2**1024 is inf; x / 2**1023 <= 2
    return np.where(peak >= _SAFE, np.exp2(exponent), 1.0)


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
    """Composite reward c[N] = sum_k w_k R[N, k], skipping NaN (and inf) entries; NaN where a row is all NaN, or
    where the sum overflows float64.

    Same as TRL's `sum_then_normalize` aggregation before normalisation.
    """
    matrix = _finite(matrix)
    all_nan = np.isnan(matrix).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        composite = np.nansum(matrix * weights[None, :], axis=1)
    composite[all_nan | ~np.isfinite(composite)] = np.nan
    return composite


def group_advantages(rewards: np.ndarray, group_size: int, scale: str = "group", eps: float = EPS) -> np.ndarray:
    """GRPO advantages A_i = (r_i - mean_group) / (std + eps) (Shao et al., 2024), rewards [N] -> [N].

    scale: "group" divides by the group's std, "batch" by the whole batch's std (TRL scale_rewards="batch"),
    "none" only centres (Dr. GRPO). NaN rewards are left out of the statistics and get advantage 0.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"unknown scale {scale!r}; choose group, batch or none")
    grouped = _grouped(_finite(rewards), group_size)
    s = _power_of_two_scale(grouped, None if scale == "batch" else 1)
    x = grouped / s
    centred = x - _nanmean(x, axis=1, keepdims=True)
    if scale == "group":
        std = nanstd(x, axis=1, keepdims=True)
        std = np.where(np.isnan(std), 0.0, std)
        centred = centred / (std + eps / s)
    elif scale == "batch":
        std = nanstd(x)
        centred = centred / ((0.0 if np.isnan(std) else std) + eps / s)
    else:
        with np.errstate(over="ignore"):
            centred = centred * s  # back to reward units; a difference beyond float64 becomes 0 below
    return np.nan_to_num(centred.reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)


def decoupled_advantages(matrix: np.ndarray, weights: np.ndarray, group_size: int, eps: float = EPS) -> np.ndarray:
    """GDPO decoupled normalisation (arXiv 2601.05242), R[N, K] -> A[N].

    Per objective, z-score within the group: A_k = (r_k - mean_g) / (std_g + eps); A = sum_k w_k A_k
    (NaN entries skipped); then batch-normalise A. Equals TRL's multi_objective_aggregation="normalize_then_sum".
    """
    grouped = _grouped(_finite(matrix), group_size)
    s_k = _power_of_two_scale(grouped, 1)  # per group and objective
    x = grouped / s_k
    mean_k = _nanmean(x, axis=1, keepdims=True)
    std_k = nanstd(x, axis=1, keepdims=True) if group_size > 1 else np.zeros_like(mean_k)
    per_objective = ((x - mean_k) / (std_k + eps / s_k)).reshape(matrix.shape)
    combined = weighted_sum(per_objective, weights)
    s = _power_of_two_scale(combined, None)
    combined = combined / s
    std = nanstd(combined)
    advantages = (combined - _nanmean(combined)) / ((0.0 if np.isnan(std) else std) + eps / s)
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
    if scale not in ("group", "decoupled", "batch", "none"):
        raise ValueError(f"unknown scale {scale!r}; choose group, batch, none or decoupled")
    grouped = _grouped(_finite(matrix), group_size)
    s = _power_of_two_scale(grouped, (0, 1) if scale == "batch" else 1)  # per objective (and group)
    x = grouped / s
    centred = x - _nanmean(x, axis=1, keepdims=True)
    if scale in ("group", "decoupled"):
        std = nanstd(x, axis=1, keepdims=True)
        std = np.where(np.isnan(std), 0.0, std)
        centred = centred / (std + eps / s)
    elif scale == "batch":
        std = nanstd(x.reshape(matrix.shape), axis=0)
        centred = centred / (np.where(np.isnan(std), 0.0, std) + eps / s)
    else:
        with np.errstate(over="ignore"):
            centred = centred * s
    return np.nan_to_num(centred.reshape(matrix.shape), nan=0.0, posinf=0.0, neginf=0.0)
