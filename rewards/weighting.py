"""Weighting strategies: how the K objectives' weights (and the signal's scale) are chosen each step.

Protocol
--------
Every strategy implements four methods:

* ``weights() -> w[K]``: the current weights (float64). The composer's composite reward is sum_k w_k R[:, k].
* ``update(matrix, **context)``: sees the step's per-objective reward matrix R[N, K] (gathered over all
  processes, masked, NaN = not applicable) and whatever else the learner hands it, and sets the state used by
  the NEXT step. Context keys a strategy does not use are ignored. Keys in use: ``step`` (int, the global step),
  ``eval_point`` ([K] per-objective scores from a validation pass, hypervolume), ``gradients`` ([K, P]
  per-objective policy-loss gradients) or ``gram`` ([K, K] their Gram matrix) and ``eta`` (gradient).
* ``state_dict()`` / ``load_state_dict(state)``: the mutable state as JSON-ready lists and floats (no NaN), so
  a resumed run continues identically.

and may implement these optional hooks; the composer uses the default when a hook is absent:

* ``reward_scale() -> float`` (default 1): composite rewards are multiplied by it BEFORE normalisation.
* ``advantage_scale() -> float`` (default 1): advantages are multiplied by it AFTER normalisation.
* ``combine(matrix, group_size, normalization) -> (rewards [N], advantages [N]) | None``: replaces the
  composer's weighted-sum-then-normalise path (used by the Lagrangian mix); None falls back to it.
* ``wants_gradients(step) -> bool`` (default False): whether the learner should compute per-objective
  gradients (K extra backward passes) at this step and pass them to ``update`` as ``gradients=`` or ``gram=``.
* ``metrics() -> dict[str, float]`` (default {}): extra scalars to log (meta factor, multipliers, ...).

Order of calls per training step (alignment/grpo.py): ``composer.score`` per process -> gather R[N, K] ->
``composer.compose(R, G)`` (uses the current state) -> ``composer.update(R, step=...)`` (sets the next
step's state). The update only reads this step's rollouts, which the policy step does not change, so calling
it before or after the optimiser step gives the same numbers. Strategies are deterministic given the same
inputs, so every rank computes the same weights from the same gathered matrix.

Strategies
----------
* `StaticWeights`: fixed linear scalarisation.
* `HypervolumeWeighting`: fixed preference weights, signal scaled by a hypervolume meta factor (Lu et al.,
  arXiv 2509.11452, section "hypervolume-guided").
* `GradientWeighting`: weights moved by mirror descent on gradient influences (Lu et al., arXiv 2509.11452,
  "gradient-based").
* `LagrangianWeighting`: constraint thresholds with Lagrange multipliers as weights (Moskovitz et al., ICLR
  2024, "Confronting Reward Model Overoptimization with Constrained RLHF"; safe-rlhf's PPO-Lag as an option).

`build_weighting` builds any of them from config options, raising `RewardConfigError` naming a bad option.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from rewards.errors import RewardConfigError
from rewards.normalization import decoupled_advantages, objective_advantages, weighted_sum
from rewards.pareto import hypervolume_contributions, hypervolume_improvement, non_dominated

Direction = Literal["lower", "upper", "equal"]
Parametrization = Literal["squashed", "identity", "log"]
LagrangianForm = Literal["moskovitz", "unsquashed", "safe_rlhf"]
Placement = Literal["advantages", "rewards"]


class WeightingStrategy(Protocol):
    """The protocol every weighting strategy implements (see the module docstring for the optional hooks)."""

    name: str

    def weights(self) -> np.ndarray: ...

    def update(self, matrix: np.ndarray, **context: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """float64 array from a list, NumPy array or (without importing torch) a tensor on any device."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc


def _nanmean_columns(matrix: np.ndarray) -> np.ndarray:
    """Per-column mean of R[N, K] ignoring NaN; NaN where a column has no value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(matrix, axis=0) if matrix.shape[0] else np.full(matrix.shape[1], np.nan)


def _check_matrix(matrix: np.ndarray, k: int) -> None:
    if matrix.ndim != 2 or matrix.shape[1] != k:
        raise RewardConfigError(f"reward matrix has shape {matrix.shape}; this strategy has {k} objectives")


def _finite_vector(values: Any, where: str, *, size: int | None = None) -> np.ndarray:
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


def _load_vector(state: Mapping[str, Any], key: str, size: int) -> np.ndarray:
    w = np.asarray(state[key], dtype=np.float64)
    if w.shape != (size,):
        raise RewardConfigError(f"saved state {key!r} has {w.size} entries, this strategy has {size}")
    return w


# --------------------------------------------------------------------------------------------------------------
# Static
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# (2a) Hypervolume-guided meta factor (Lu et al., arXiv 2509.11452)
# --------------------------------------------------------------------------------------------------------------


def meta_factor(hvc: float) -> float:
    """Meta reward m = 0.5 + 1.5 * tanh(max(HVC, 0)) in [0.5, 2) (Lu et al., arXiv 2509.11452).

    No improvement gives 0.5 (the signal is halved), a large one approaches 2.
    """
    return 0.5 + 1.5 * math.tanh(max(float(hvc), 0.0))


class HypervolumeWeighting:
    """Fixed preference weights; the signal of the next step is scaled by a hypervolume meta factor m.

    Lu et al. (arXiv 2509.11452), hypervolume-guided weighting. A Pareto buffer B holds per-objective score
    vectors, every objective oriented to be maximised. Each ``update(R[N, K], eval_point=None)``:

    1. measures p_t [K]: ``eval_point`` when the learner passes one (the authors run a validation pass every
       step), else the batch's per-objective nanmean (a cheap estimate; ``source="eval"`` ignores batches
       and waits for eval points). A p_t with a NaN objective (no value in the batch) is skipped.
    2. The first measurement p0 becomes both the first element of B and the HV reference point, unless
       ``reference`` was given (then B starts empty). m stays 1 until there is something to compare.
    3. HVC = HV(B u {p_t}) - HV(B) (exact, `rewards.pareto.hypervolume_improvement`), m = meta_factor(HVC);
       p_t joins B only if HVC > 0; dominated points are then dropped from B (exact: they add no volume), and
       when ``buffer_size`` is set the point with the smallest exclusive contribution goes next (approximate:
       the volume it covered can later count as improvement again). Cost, 4 objectives on this project's 2-core
       CPU: about 1 ms per update with an uncapped buffer of 200 points; a cap costs one contribution pass per
       addition once full (about 30 ms at 64 points), so leave it unset unless the buffer grows into thousands.

    Edge: a p_t that is not strictly better than the reference in EVERY objective spans an empty box and
    contributes 0, so with the reference at p0, a step that trades one objective against another gives
    m = 0.5 until the policy beats p0 everywhere.

    Orientation and scale: points are compared as ``orient * p / scale``. ``maximize`` (default: True where
    the preference weight is >= 0, False where it is negative) sets orient = +1/-1. ``scales`` [K] are fixed
    positive per-objective scales; None (default) uses the running std of each objective over every row seen
    so far (Welford, NaN skipped; 1.0 while fewer than two values or zero spread), so an objective measured
    in tokens does not dominate the volume. HV is a product of ranges, so the scales only set the size of
    HVC that tanh sees, not which points dominate.

    Placement: "advantages" (default) - the composer multiplies advantages by m AFTER normalisation, so m
    has an effect under any normalisation. "rewards" (the authors' placement) - composite rewards are
    multiplied by m BEFORE normalisation; GRPO's group std normalisation (and batch or decoupled
    normalisation) cancels it exactly up to the 1e-4 in the denominator: only "none" (centring only, like
    RLOO) feels it.
    """

    name = "hypervolume"

    def __init__(
        self,
        weights: Sequence[float],
        scales: Sequence[float] | None = None,
        reference: Sequence[float] | None = None,
        buffer_size: int | None = None,
        placement: Placement = "advantages",
        maximize: Sequence[bool] | None = None,
        source: Literal["batch", "eval"] = "batch",
    ) -> None:
        self._w = _finite_vector(weights, "weighting.weights")
        k = self._w.size
        if scales is not None:
            s = _finite_vector(scales, "weighting.scales", size=k)
            if np.any(s <= 0):
                raise RewardConfigError(f"weighting.scales: must all be > 0, got {s.tolist()}")
            self._scales: np.ndarray | None = s
        else:
            self._scales = None
        self._ref = _finite_vector(reference, "weighting.reference", size=k) if reference is not None else None
        if buffer_size is not None and (
            isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1
        ):
            raise RewardConfigError(f"weighting.buffer_size: must be a positive integer or null, got {buffer_size!r}")
        self.buffer_size = None if buffer_size is None else int(buffer_size)
        if placement not in ("advantages", "rewards"):
            raise RewardConfigError(f"weighting.placement: {placement!r} is not allowed; choose advantages or rewards")
        self.placement: Placement = placement
        if maximize is None:
            self._orient = np.where(self._w < 0, -1.0, 1.0)
        else:
            if len(maximize) != k or not all(isinstance(b, bool) for b in maximize):
                raise RewardConfigError(f"weighting.maximize: needs {k} true/false entries, got {maximize!r}")
            self._orient = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
        if source not in ("batch", "eval"):
            raise RewardConfigError(f"weighting.source: {source!r} is not allowed; choose batch or eval")
        self.source = source
        self._buffer = np.empty((0, k))
        self._m = 1.0
        self._last_hvc = 0.0
        self._count = np.zeros(k)
        self._mean = np.zeros(k)
        self._m2 = np.zeros(k)
        self._measurements = 0
        self._skipped = 0

    # -- protocol --------------------------------------------------------------------------------------------
    def weights(self) -> np.ndarray:
        return self._w.copy()

    def meta(self) -> float:
        """The current meta factor m (1.0 before the first comparison)."""
        return self._m

    def reward_scale(self) -> float:
        return self._m if self.placement == "rewards" else 1.0

    def advantage_scale(self) -> float:
        return self._m if self.placement == "advantages" else 1.0

    def scales(self) -> np.ndarray:
        """Per-objective scales [K] used before the hypervolume (fixed, or the running std)."""
        if self._scales is not None:
            return self._scales.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(self._m2 / np.maximum(self._count - 1, 1))
        return np.where((self._count > 1) & (std > 0) & np.isfinite(std), std, 1.0)

    def buffer(self) -> np.ndarray:
        """The Pareto buffer [n, K] in the objectives' own units."""
        return self._buffer.copy()

    def reference(self) -> np.ndarray | None:
        """The HV reference point [K] in the objectives' own units (None before the first measurement)."""
        return None if self._ref is None else self._ref.copy()

    def _observe(self, matrix: np.ndarray) -> None:
        """Merge the batch's per-column count/mean/M2 into the running ones (Chan et al.'s parallel update)."""
        valid = ~np.isnan(matrix)
        n_b = valid.sum(axis=0).astype(np.float64)
        if not np.any(n_b):
            return
        safe = np.where(valid, matrix, 0.0)
        mean_b = safe.sum(axis=0) / np.maximum(n_b, 1)
        m2_b = (np.where(valid, matrix - mean_b, 0.0) ** 2).sum(axis=0)
        n = self._count + n_b
        delta = mean_b - self._mean
        ratio = np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)
        self._mean = self._mean + delta * ratio
        self._m2 = self._m2 + m2_b + delta**2 * self._count * ratio
        self._count = n

    def _transform(self, points: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return points * (self._orient / scales)

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        matrix = np.asarray(matrix, dtype=np.float64)
        _check_matrix(matrix, self._w.size)
        if self._scales is None:
            self._observe(matrix)
        eval_point = context.get("eval_point")
        if eval_point is not None:
            point = _to_numpy(eval_point, "eval_point").reshape(-1)
            if point.shape != (self._w.size,):
                raise ValueError(f"eval_point has {point.size} entries, expected {self._w.size}")
        elif self.source == "eval":
            return
        else:
            point = _nanmean_columns(matrix)
        if not np.all(np.isfinite(point)):
            self._skipped += 1
            return
        self._measurements += 1
        if self._ref is None:
            self._ref = point.copy()
            self._buffer = point[None, :].copy()
            return
        scales = self.scales()
        buf = self._transform(self._buffer, scales)
        hvc = hypervolume_improvement(buf, self._transform(point, scales), self._transform(self._ref, scales))
        self._last_hvc = float(hvc)
        self._m = meta_factor(hvc)
        if hvc > 0:
            self._buffer = np.vstack([self._buffer, point[None, :]])
            self._prune(scales)

    def _prune(self, scales: np.ndarray) -> None:
        z = self._transform(self._buffer, scales)
        keep = non_dominated(z)
        self._buffer, z = self._buffer[keep], z[keep]
        if self.buffer_size is not None:
            ref = self._transform(self._ref, scales)  # type: ignore[arg-type]
            while len(self._buffer) > self.buffer_size:
                drop = int(np.argmin(hypervolume_contributions(z, ref)))
                self._buffer, z = np.delete(self._buffer, drop, axis=0), np.delete(z, drop, axis=0)

    def metrics(self) -> dict[str, float]:
        return {
            "hv/meta_factor": self._m,
            "hv/improvement": self._last_hvc,
            "hv/buffer_size": float(len(self._buffer)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self._w.tolist(),
            "meta": self._m,
            "last_hvc": self._last_hvc,
            "reference": None if self._ref is None else self._ref.tolist(),
            "buffer": self._buffer.tolist(),
            "count": self._count.tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
            "measurements": self._measurements,
            "skipped": self._skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = self._w.size
        self._w = _load_vector(state, "weights", k)
        self._m = float(state["meta"])
        self._last_hvc = float(state["last_hvc"])
        self._ref = None if state["reference"] is None else _load_vector(state, "reference", k)
        buffer = np.asarray(state["buffer"], dtype=np.float64).reshape(-1, k)
        self._buffer = buffer
        self._count = _load_vector(state, "count", k)
        self._mean = _load_vector(state, "mean", k)
        self._m2 = _load_vector(state, "m2", k)
        self._measurements = int(state["measurements"])
        self._skipped = int(state["skipped"])


# --------------------------------------------------------------------------------------------------------------
# (2b) Gradient-based weighting (Lu et al., arXiv 2509.11452)
# --------------------------------------------------------------------------------------------------------------


def clip_gram(gram: np.ndarray, max_norm: float) -> np.ndarray:
    """The Gram matrix [K, K] of the gradients after each g_k is clipped to norm <= max_norm.

    Clipping scales g_k by c_k = min(1, max_norm / |g_k|), |g_k| = sqrt(G_kk), so G'_kj = c_k c_j G_kj.
    """
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    c = np.minimum(1.0, np.divide(max_norm, norms, out=np.ones_like(norms), where=norms > 0))
    return gram * c[:, None] * c[None, :]


def gradient_influence(gram: np.ndarray) -> np.ndarray:
    """Influence I_k = sum_j <g_k, g_j>: the row sums of the Gram matrix G [K, K] -> [K] (diagonal included)."""
    return gram.sum(axis=1)


def mirror_descent_step(
    weights: Sequence[float] | np.ndarray,
    grads: Any = None,
    eta: float = 0.1,
    *,
    gram: Any = None,
    max_norm: float | None = None,
) -> np.ndarray:
    """One exponentiated-gradient step w <- softmax(log w + eta * I) (Lu et al., arXiv 2509.11452).

    Args:
        weights: w [K], >= 0 with a positive sum (a zero weight stays zero).
        grads: g [K, P], the policy-loss gradient of each objective's advantages alone (flattened over the
            chosen parameters: the authors use a band of middle layers; with PEFT the adapter weights).
            Either `grads` or `gram` (G = g g^T, [K, K]) is required.
        eta: step size; the authors' eta = lr / lambda = 1e-6 / 1e-5 = 0.1.
        gram: the Gram matrix [K, K] instead of `grads` (compute it on the device when P is large).
        max_norm: clip each g_k to this norm first (the authors clip gradient norms at 1.0); None = no clip.

    Returns:
        The new weights [K] on the simplex. An objective whose gradient aligns with the others (large
        I_k = sum_j <g_k, g_j>) gains weight; one that conflicts loses it.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or np.any(w < 0) or not w.sum() > 0 or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be a finite non-negative vector with a positive sum, got {w.tolist()}")
    if (grads is None) == (gram is None):
        raise ValueError("give exactly one of grads [K, P] or gram [K, K]")
    if grads is not None:
        g = _to_numpy(grads, "grads")
        if g.ndim != 2 or g.shape[0] != w.size:
            raise ValueError(f"grads must have shape [K={w.size}, P], got {g.shape}")
        G = g @ g.T
    else:
        G = _to_numpy(gram, "gram")
        if G.shape != (w.size, w.size):
            raise ValueError(f"gram must have shape [{w.size}, {w.size}], got {G.shape}")
    if not np.all(np.isfinite(G)):
        raise ValueError("gradients (or their Gram matrix) contain NaN or inf")
    if max_norm is not None:
        G = clip_gram(G, float(max_norm))
    with np.errstate(divide="ignore"):
        logits = np.log(w) + float(eta) * gradient_influence(G)
    logits -= logits[np.isfinite(logits)].max()
    e = np.exp(logits)
    return e / e.sum()


class GradientWeighting:
    """Weights moved by mirror descent on per-objective gradient influences (Lu et al., arXiv 2509.11452).

    The learner computes, for each objective k, the policy-loss gradient g_k of the advantages from r_k alone
    (`RewardComposer.objective_advantages`), and passes them to ``update(R, gradients=[K, P])`` or
    ``update(R, gram=[K, K])``; each call with gradients does one `mirror_descent_step` (gradients clipped to
    ``clip_norm`` first, the authors' 1.0). The composite reward is sum_k w_k r_k with the composer's ordinary
    normalisation. ``wants_gradients(step)`` tells the learner when to spend the K extra backward passes
    (every ``update_interval`` steps); updates without gradients, or whose ``step`` is off the interval, leave
    the weights unchanged. ``update(..., eta=...)`` overrides eta for one call (the authors use lr_t / lambda,
    following the learning-rate schedule).

    The initial weights must be positive; they are normalised to sum 1 (mirror descent lives on the simplex;
    under group normalisation the overall scale of w does not matter). Orient every objective to be
    maximised (no negative weights). One difference from the authors' loop: they recompute the weights from
    the step's gradients before that step's policy update; here (as for every strategy) the weights set by
    ``update`` at step t are used from step t + 1.
    """

    name = "gradient"

    def __init__(
        self,
        weights: Sequence[float],
        eta: float = 0.1,
        update_interval: int = 1,
        clip_norm: float | None = 1.0,
        names: Sequence[str] | None = None,
    ) -> None:
        w = _finite_vector(weights, "weighting.weights")
        if names is not None and len(names) != w.size:
            raise RewardConfigError(f"weighting: {len(names)} names for {w.size} weights")
        self.names = list(names) if names is not None else [str(k) for k in range(w.size)]
        if w.size < 2:
            raise RewardConfigError("weighting: gradient weighting needs at least two objectives, got one")
        if np.any(w <= 0):
            raise RewardConfigError(
                f"weighting.weights: gradient weighting needs positive weights (orient objectives to be "
                f"maximised), got {w.tolist()}"
            )
        if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
            raise RewardConfigError(f"weighting.eta: must be a number > 0, got {eta!r}")
        if isinstance(update_interval, bool) or not isinstance(update_interval, int) or update_interval < 1:
            raise RewardConfigError(f"weighting.update_interval: must be an integer >= 1, got {update_interval!r}")
        if clip_norm is not None and not (isinstance(clip_norm, int | float) and clip_norm > 0):
            raise RewardConfigError(f"weighting.clip_norm: must be a number > 0 or null, got {clip_norm!r}")
        self._w = w / w.sum()
        self.eta = float(eta)
        self.update_interval = update_interval
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self._updates = 0
        self._influence = np.zeros(w.size)

    def weights(self) -> np.ndarray:
        return self._w.copy()

    def wants_gradients(self, step: int) -> bool:
        return int(step) % self.update_interval == 0

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        _check_matrix(np.asarray(matrix), self._w.size)
        grads, gram = context.get("gradients"), context.get("gram")
        if grads is None and gram is None:
            return
        step = context.get("step")
        if step is not None and not self.wants_gradients(step):
            return
        if grads is not None and gram is None:
            g = _to_numpy(grads, "gradients")
            gram = g @ g.T
        G = _to_numpy(gram, "gram")
        if self.clip_norm is not None:
            G = clip_gram(G, self.clip_norm)
        eta = self.eta if context.get("eta") is None else float(context["eta"])
        self._w = mirror_descent_step(self._w, gram=G, eta=eta)
        self._influence = gradient_influence(G)
        self._updates += 1

    def metrics(self) -> dict[str, float]:
        out = {f"gradient/influence/{name}": float(v) for name, v in zip(self.names, self._influence)}
        out["gradient/updates"] = float(self._updates)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self._w.tolist(), "updates": self._updates, "influence": self._influence.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._w = _load_vector(state, "weights", self._w.size)
        self._influence = _load_vector(state, "influence", self._w.size)
        self._updates = int(state["updates"])


# --------------------------------------------------------------------------------------------------------------
# (3) Lagrangian multipliers (Moskovitz et al., ICLR 2024; safe-rlhf PPO-Lag)
# --------------------------------------------------------------------------------------------------------------

_DIRECTIONS = ("lower", "upper", "equal")
LAMBDA_CEILING = 1e6


def _per_constraint(value: str | Sequence[str], n: int, allowed: Sequence[str], name: str) -> list[str]:
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} needs {n} entries, got {len(values)}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name}: {v!r} is not allowed; choose {', '.join(allowed)}")
    return values


def direction_signs(direction: str | Sequence[str], n: int) -> np.ndarray:
    """d [n]: +1 for a lower bound (J >= theta) and for equality, -1 for an upper bound (J <= theta)."""
    return np.array([-1.0 if d == "upper" else 1.0 for d in _per_constraint(direction, n, _DIRECTIONS, "direction")])


def squash(lmbda: Any, kind: str | Sequence[str] = "inequality") -> np.ndarray:
    """s(lambda) [C]: sigmoid for an inequality constraint (s in (0, 1)), tanh for equality (s in (-1, 1)).

    Moskovitz et al. (ICLR 2024): bounded multipliers keep the mixed advantage's scale bounded.
    """
    x = np.asarray(lmbda, dtype=np.float64)
    kinds = _per_constraint(kind, x.size, ("inequality", "equality"), "kind")
    eq = np.array([k == "equality" for k in kinds]).reshape(x.shape)
    return np.where(eq, np.tanh(x), 0.5 * (1.0 + np.tanh(0.5 * x)))


def multiplier_values(lmbda: Any, direction: str | Sequence[str], parametrization: Parametrization) -> np.ndarray:
    """The multipliers as used in the mix [C]: squash(lambda) ("squashed"), lambda ("identity") or exp(lambda)
    ("log", safe-rlhf's log-lambda parameter)."""
    x = np.asarray(lmbda, dtype=np.float64)
    if parametrization == "squashed":
        dirs = _per_constraint(direction, x.size, _DIRECTIONS, "direction")
        return squash(x, ["equality" if d == "equal" else "inequality" for d in dirs])
    if parametrization == "identity":
        return x.copy()
    if parametrization == "log":
        return np.exp(x)
    raise ValueError(f"parametrization: {parametrization!r} is not allowed; choose squashed, identity or log")


def multiplier_step(
    lmbda: Any,
    J: Any,
    theta: Any,
    direction: str | Sequence[str] = "lower",
    lr: float = 0.1,
    momentum: float = 0.1,
    velocity: Any = None,
    *,
    parametrization: Parametrization = "squashed",
    max_grad_norm: float | None = None,
    max_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One SGD(+momentum) step on the multiplier loss L = sum_i s(lambda_i) * d_i * (J_i - theta_i).

    Moskovitz et al. (ICLR 2024) minimise L_lambda = sum_i s(lambda_i) (J_i - theta_i) with SGD (lr 0.1,
    momentum 0.1 in their code, as torch.optim.SGD: v <- mu * v + grad; lambda <- lambda - lr * v).
    Sign convention (d_i, see `direction_signs`), which makes the multiplier RISE while its constraint is
    violated and FALL once it is met:

    * "lower" (J >= theta, d = +1; the authors' case): J < theta gives a negative gradient, lambda rises, and
      the mix pushes J up with weight +s.
    * "upper" (J <= theta, d = -1): J > theta raises lambda; the mix pushes J down with weight -s.
    * "equal" (J = theta, d = +1, tanh): lambda rises while J < theta and falls (through 0 to negative, which
      pushes J down) while J > theta; the gradient vanishes at J = theta.

    Args:
        lmbda: the parameters [C] (squashed: pre-squash lambda; identity: lambda; log: log lambda).
        J: [C] batch means of the constrained rewards (detached); a NaN entry (no data) leaves that
            multiplier and its velocity unchanged.
        theta: [C] thresholds.
        direction: "lower", "upper" or "equal", one or per constraint.
        lr, momentum: SGD settings (lr > 0, momentum >= 0).
        velocity: [C] momentum buffer (None = zeros).
        parametrization: "squashed" (sigmoid/tanh), "identity" (unsquashed; inequality multipliers projected
            onto lambda >= 0 after the step, as the authors clamp), "log" (safe-rlhf: lambda = exp(param), the
            loss -(J_c - threshold) * lambda for a cost c is the "upper" case here).
        max_grad_norm: clip the gradient vector's norm first (the authors' code clips at the policy's
            max_grad_norm); None = no clip.
        max_value: upper bound on lambda for "identity" and "log" (safe-rlhf's lambda_max); None = none, except
            that the log parametrisation is always capped at LAMBDA_CEILING = 1e6: its gradient carries a factor
            lambda, so a long violation grows lambda super-exponentially and would overflow to inf / NaN.

    Returns:
        (new parameters [C], new velocity [C]).
    """
    x = np.asarray(lmbda, dtype=np.float64).reshape(-1).copy()
    n = x.size
    j = np.asarray(J, dtype=np.float64).reshape(-1)
    t = np.asarray(theta, dtype=np.float64).reshape(-1)
    if j.size != n or t.size != n:
        raise ValueError(f"lmbda, J and theta need the same length, got {n}, {j.size}, {t.size}")
    v = np.zeros(n) if velocity is None else np.asarray(velocity, dtype=np.float64).reshape(-1).copy()
    dirs = _per_constraint(direction, n, _DIRECTIONS, "direction")
    d = direction_signs(dirs, n)
    if parametrization == "squashed":
        s = multiplier_values(x, dirs, "squashed")
        eq = np.array([k == "equal" for k in dirs])
        ds = np.where(eq, 1.0 - s**2, s * (1.0 - s))
    elif parametrization == "identity":
        ds = np.ones(n)
    elif parametrization == "log":
        if "equal" in dirs:
            raise ValueError("the log parametrisation keeps lambda > 0 and cannot express an equality constraint")
        ds = np.exp(x)
    else:
        raise ValueError(f"parametrization: {parametrization!r} is not allowed; choose squashed, identity or log")
    valid = np.isfinite(j)
    grad = np.where(valid, ds * d * (np.where(valid, j, 0.0) - t), 0.0)
    if max_grad_norm is not None:
        norm = float(np.linalg.norm(grad))
        if norm > max_grad_norm:
            grad = grad * (max_grad_norm / norm)
    v_new = np.where(valid, momentum * v + grad, v)
    x_new = np.where(valid, x - lr * v_new, x)
    if parametrization == "identity":
        ineq = np.array([k != "equal" for k in dirs])
        x_new = np.where(ineq, np.maximum(x_new, 0.0), x_new)
        if max_value is not None:
            x_new = np.minimum(x_new, max_value)
    elif parametrization == "log":
        x_new = np.minimum(x_new, math.log(LAMBDA_CEILING if max_value is None else min(max_value, LAMBDA_CEILING)))
    return x_new, v_new


def mixed_advantages(A_base: Any, A_k: Any, s: Any, signs: Any = None) -> np.ndarray:
    """Moskovitz et al.'s squashed mix A = (C - sum_i s_i) * A_base + sum_i d_i s_i A_i -> [N].

    Args:
        A_base: [N] advantage of what is maximised (zeros for the KL-only variant, where the KL is the
            learner's own beta term).
        A_k: [N, C] per-constraint advantages.
        s: [C] squashed multipliers.
        signs: [C] d_i (+1 lower/equality, -1 upper bound); None = all +1 (the authors' code).

    C is the number of CONSTRAINED components (the "K" of the SPECS formula, the authors' n_constraints):
    each constraint trades (1 - s_i) of the base against s_i of its own advantage, so the factors sum to C.
    """
    a_k = np.asarray(A_k, dtype=np.float64)
    sv = np.asarray(s, dtype=np.float64).reshape(-1)
    d = np.ones_like(sv) if signs is None else np.asarray(signs, dtype=np.float64).reshape(-1)
    return (sv.size - sv.sum()) * np.asarray(A_base, dtype=np.float64) + a_k @ (d * sv)


def unsquashed_advantages(A_base: Any, A_k: Any, lmbda: Any, signs: Any = None) -> np.ndarray:
    """Unsquashed mix A = A_base + sum_i d_i lambda_i A_i -> [N] (lambda >= 0 for inequalities, by projection)."""
    lv = np.asarray(lmbda, dtype=np.float64).reshape(-1)
    d = np.ones_like(lv) if signs is None else np.asarray(signs, dtype=np.float64).reshape(-1)
    return np.asarray(A_base, dtype=np.float64) + np.asarray(A_k, dtype=np.float64) @ (d * lv)


def safe_rlhf_advantages(A_base: Any, A_k: Any, lmbda: Any, signs: Any = None) -> np.ndarray:
    """safe-rlhf PPO-Lag mix A = (A_base + sum_i d_i lambda_i A_i) / (1 + sum_i lambda_i) -> [N].

    With one upper-bounded cost (d = -1) this is safe-rlhf's (A_r - lambda * A_c) / (1 + lambda); several
    constraints share the denominator (our generalisation).
    """
    lv = np.asarray(lmbda, dtype=np.float64).reshape(-1)
    return unsquashed_advantages(A_base, A_k, lv, signs) / (1.0 + lv.sum())


@dataclass(frozen=True)
class Constraint:
    """One constrained objective: its index in R[N, K], its threshold theta, and which side is allowed."""

    objective: int
    threshold: float
    direction: Direction = "lower"


_FORM_DEFAULTS: dict[str, tuple[Parametrization, float, float]] = {
    # form: (parametrization, default momentum, default initial multiplier value)
    "moskovitz": ("squashed", 0.1, 0.0),  # authors: lambda ~ N(0, 0.01) before squashing; we start at 0
    "unsquashed": ("identity", 0.1, 0.5),  # authors' code starts the unsquashed lambda at 0.5
    "safe_rlhf": ("log", 0.0, 1.0),  # safe-rlhf: lambda_init 1.0, plain SGD on log lambda
}


class LagrangianWeighting:
    """Constrained RLHF: constraint thresholds with Lagrange multipliers as weights (Moskovitz et al., ICLR 2024).

    Per objective, advantages A_k come from normalising that objective alone (the composer's normalisation:
    group / batch / none; "decoupled" = GDPO: per-objective group z-score, weighted sum, batch normalisation).
    They are mixed (``form``):

    * "moskovitz" (default): A = (C - sum_i s_i) A_base + sum_i d_i s_i A_i, s = sigmoid (inequality) or tanh
      (equality) of lambda, C the number of constraints.
    * "unsquashed": A = A_base + sum_i d_i lambda_i A_i, lambda >= 0 by projection for inequalities.
    * "safe_rlhf": A = (A_base + sum_i d_i lambda_i A_i) / (1 + sum_i lambda_i), lambda = exp(log lambda)
      (inequalities only).

    A_base = sum of the advantages of the ``base`` objectives: None = KL-only (A_base = 0; the KL is the
    learner's beta term, which the mix does not scale, unlike the authors' KL-reward advantage), one index
    (maximise a task reward s.t. constraints), or several (e.g. every constrained objective, with "upper"
    constraints: maximise the sum of rewards s.t. upper bounds). d_i = +1 for "lower"/"equal", -1 for "upper".

    ``weights()`` reports the effective coefficient of each objective's advantage, so that A = sum_k w_k A_k
    exactly (base factor on the base objectives plus d_i s_i on constrained ones; 0 for objectives in
    neither); `multipliers()` gives s (or lambda) per constraint and `metrics()` logs both.

    ``update(R)`` does one `multiplier_step` with J_i = nanmean of the constrained column over the batch
    (the authors: one step per policy update, after it). The learner calls ``compose`` (mix with lambda_t)
    then ``update`` (lambda_{t+1}); J is detached from this step's rollouts, so it does not matter whether the
    optimiser step happens in between.
    """

    name = "lagrangian"

    def __init__(
        self,
        num_objectives: int,
        constraints: Sequence[Constraint | tuple[int, float] | tuple[int, float, str]],
        base: int | Sequence[int] | None = None,
        form: LagrangianForm = "moskovitz",
        lr: float = 0.1,
        momentum: float | None = None,
        init: float | None = None,
        max_grad_norm: float | None = None,
        lambda_max: float | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(num_objectives, bool) or not isinstance(num_objectives, int) or num_objectives < 1:
            raise RewardConfigError(f"weighting: num_objectives must be a positive integer, got {num_objectives!r}")
        self.num_objectives = num_objectives
        if form not in _FORM_DEFAULTS:
            raise RewardConfigError(f"weighting.form: {form!r} is not allowed; choose {', '.join(_FORM_DEFAULTS)}")
        self.form: LagrangianForm = form
        parsed: list[Constraint] = []
        for i, c in enumerate(constraints):
            c = c if isinstance(c, Constraint) else Constraint(*c)
            if (
                isinstance(c.objective, bool)
                or not isinstance(c.objective, int | np.integer)
                or not (0 <= c.objective < num_objectives)
            ):
                raise RewardConfigError(
                    f"weighting.constraints[{i}].objective: {c.objective!r} is not an objective index "
                    f"(0..{num_objectives - 1})"
                )
            if not (isinstance(c.threshold, int | float) and math.isfinite(c.threshold)):
                raise RewardConfigError(
                    f"weighting.constraints[{i}].threshold: must be a finite number, got {c.threshold!r}"
                )
            if c.direction not in _DIRECTIONS:
                raise RewardConfigError(
                    f"weighting.constraints[{i}].direction: {c.direction!r} is not allowed; choose "
                    f"{', '.join(_DIRECTIONS)}"
                )
            if form == "safe_rlhf" and c.direction == "equal":
                raise RewardConfigError(
                    f"weighting.constraints[{i}].direction: form safe_rlhf keeps lambda > 0 and cannot express "
                    f"an equality constraint; use form moskovitz or unsquashed"
                )
            parsed.append(Constraint(int(c.objective), float(c.threshold), c.direction))
        if not parsed:
            raise RewardConfigError("weighting.constraints: the Lagrangian strategy needs at least one constraint")
        self.constraints = parsed
        base_list = [] if base is None else [base] if isinstance(base, int | np.integer) else list(base)
        for b in base_list:
            if isinstance(b, bool) or not isinstance(b, int | np.integer) or not 0 <= b < num_objectives:
                raise RewardConfigError(f"weighting.base: {b!r} is not an objective index (0..{num_objectives - 1})")
        if len(set(base_list)) != len(base_list):
            raise RewardConfigError(f"weighting.base: repeated objectives {base_list}")
        self.base = [int(b) for b in base_list]
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise RewardConfigError(f"weighting.lr: must be a number > 0, got {lr!r}")
        self.lr = float(lr)
        parametrization, default_momentum, default_init = _FORM_DEFAULTS[form]
        self.parametrization: Parametrization = parametrization
        momentum = default_momentum if momentum is None else momentum
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise RewardConfigError(f"weighting.momentum: must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        if max_grad_norm is not None and not (isinstance(max_grad_norm, int | float) and max_grad_norm > 0):
            raise RewardConfigError(f"weighting.max_grad_norm: must be a number > 0 or null, got {max_grad_norm!r}")
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        if lambda_max is not None:
            if form == "moskovitz":
                raise RewardConfigError(
                    "weighting.lambda_max: squashed multipliers are bounded already; "
                    "lambda_max applies to forms unsquashed and safe_rlhf"
                )
            if not (isinstance(lambda_max, int | float) and lambda_max > 0):
                raise RewardConfigError(f"weighting.lambda_max: must be a number > 0 or null, got {lambda_max!r}")
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        init = default_init if init is None else init
        if not (isinstance(init, int | float) and math.isfinite(init)):
            raise RewardConfigError(f"weighting.init: must be a finite number, got {init!r}")
        if parametrization == "log" and init <= 0:
            raise RewardConfigError(f"weighting.init: safe_rlhf's lambda must start > 0, got {init!r}")
        if parametrization == "identity" and init < 0 and any(c.direction != "equal" for c in parsed):
            raise RewardConfigError(f"weighting.init: unsquashed inequality multipliers must start >= 0, got {init}")
        start = math.log(init) if parametrization == "log" else float(init)
        if names is not None and len(names) != num_objectives:
            raise RewardConfigError(f"weighting: {len(names)} names for {num_objectives} objectives")
        self.names = list(names) if names is not None else [str(k) for k in range(num_objectives)]
        n_c = len(parsed)
        self._param = np.full(n_c, start)
        self._velocity = np.zeros(n_c)
        self._last_j = np.zeros(n_c)
        self._updates = 0
        self._idx = np.array([con.objective for con in parsed], dtype=np.intp)
        self._theta = np.array([con.threshold for con in parsed])
        self._dirs = [con.direction for con in parsed]
        self._signs = direction_signs(self._dirs, n_c)

    # -- multipliers -----------------------------------------------------------------------------------------
    def multipliers(self) -> np.ndarray:
        """The multipliers as they enter the mix [C]: s(lambda) (moskovitz) or lambda (unsquashed, safe_rlhf)."""
        return multiplier_values(self._param, self._dirs, self.parametrization)

    def base_factor(self) -> float:
        """The coefficient of A_base: C - sum s (moskovitz), 1 (unsquashed), 1 / (1 + sum lambda) (safe_rlhf)."""
        m = self.multipliers()
        if self.form == "moskovitz":
            return float(m.size - m.sum())
        if self.form == "unsquashed":
            return 1.0
        return float(1.0 / (1.0 + m.sum()))

    def weights(self) -> np.ndarray:
        m = self.multipliers()
        coef = self._signs * m
        if self.form == "safe_rlhf":
            coef = coef / (1.0 + m.sum())
        w = np.zeros(self.num_objectives)
        w[self.base] += self.base_factor()
        np.add.at(w, self._idx, coef)
        return w

    def combine(self, matrix: np.ndarray, group_size: int, normalization: str) -> tuple[np.ndarray, np.ndarray]:
        """Mixed advantages [N] from per-objective advantages, and composite rewards sum_k w_k R_k [N]."""
        w = self.weights()
        rewards = weighted_sum(matrix, w)
        if normalization == "decoupled":
            return rewards, decoupled_advantages(matrix, w, group_size)
        return rewards, objective_advantages(matrix, group_size, normalization) @ w

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        matrix = np.asarray(matrix, dtype=np.float64)
        _check_matrix(matrix, self.num_objectives)
        j = _nanmean_columns(matrix)[self._idx]
        self._param, self._velocity = multiplier_step(
            self._param,
            j,
            self._theta,
            self._dirs,
            lr=self.lr,
            momentum=self.momentum,
            velocity=self._velocity,
            parametrization=self.parametrization,
            max_grad_norm=self.max_grad_norm,
            max_value=self.lambda_max,
        )
        self._last_j = np.where(np.isfinite(j), j, self._last_j)
        self._updates += 1

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"lagrange/base_factor": self.base_factor()}
        for i, (m, c) in enumerate(zip(self.multipliers(), self.constraints)):
            key = f"{self.names[c.objective]}" + (f"#{i}" if list(self._idx).count(c.objective) > 1 else "")
            out[f"lagrange/multiplier/{key}"] = float(m)
            if self._updates:  # d * (theta - J) of the last update: > 0 while an inequality is violated
                out[f"lagrange/violation/{key}"] = float(self._signs[i] * (self._theta[i] - self._last_j[i]))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "param": self._param.tolist(),
            "velocity": self._velocity.tolist(),
            "last_j": self._last_j.tolist(),
            "updates": self._updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("form") != self.form:
            raise RewardConfigError(f"saved Lagrangian state is for form {state.get('form')!r}, this is {self.form!r}")
        c = len(self.constraints)
        self._param = _load_vector(state, "param", c)
        self._velocity = _load_vector(state, "velocity", c)
        self._last_j = _load_vector(state, "last_j", c)
        self._updates = int(state["updates"])


# --------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------

_OPTIONS: dict[str, tuple[str, ...]] = {
    "static": ("weights",),
    "hypervolume": ("weights", "scales", "reference", "buffer_size", "placement", "maximize", "source"),
    "gradient": ("weights", "eta", "update_interval", "clip_norm"),
    "lagrangian": ("weights", "constraints", "base", "form", "lr", "momentum", "init", "max_grad_norm", "lambda_max"),
}


def _objective_index(name: Any, names: Sequence[str], where: str) -> int:
    if isinstance(name, str) and name in names:
        return names.index(name)
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(names):
        return name
    raise RewardConfigError(f"{where}: {name!r} is not an objective; objectives are {', '.join(names)}")


def build_weighting(
    name: str, num_objectives: int, names: Sequence[str] | None = None, **options: Any
) -> WeightingStrategy:
    """A weighting strategy from config: ``name`` in static / hypervolume / gradient / lagrangian.

    Options (all optional unless marked):

    * static: ``weights`` [K] (default all 1).
    * hypervolume: ``weights``, ``scales`` [K] or null (running std), ``reference`` [K] or null (p0),
      ``buffer_size`` int or null, ``placement`` advantages|rewards, ``maximize`` [K] bools or null (from the
      weights' signs), ``source`` batch|eval.
    * gradient: ``weights`` (positive), ``eta`` (0.1), ``update_interval`` (1), ``clip_norm`` (1.0 or null).
    * lagrangian: ``weights`` must be absent or all 1 (the multipliers are the weights); ``constraints``
      (required) - a list of {objective: name, threshold: float, direction:
      lower|upper|equal (default lower)}; ``base`` - an objective name, a list of names, or null (KL-only);
      ``form`` moskovitz|unsquashed|safe_rlhf; ``lr`` (0.1); ``momentum`` (form default: 0.1, 0.1, 0.0);
      ``init`` (initial multiplier: 0 pre-squash, 0.5, 1.0); ``max_grad_norm``; ``lambda_max``.

    Objectives are named by ``names`` (default "0", "1", ...). Unknown strategies or options, and bad values,
    raise RewardConfigError naming the field (``weighting.<option>``).
    """
    names = [str(k) for k in range(num_objectives)] if names is None else list(names)
    if len(names) != num_objectives:
        raise RewardConfigError(f"weighting: {len(names)} objective names for {num_objectives} objectives")
    if name not in _OPTIONS:
        raise RewardConfigError(f"weighting.strategy: {name!r} is not known; choose {', '.join(_OPTIONS)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise RewardConfigError(
            f"weighting: unknown option(s) {unknown} for strategy {name!r}; allowed: {', '.join(_OPTIONS[name])}"
        )
    opts = dict(options)
    weights = opts.pop("weights", None)
    if weights is None:
        weights = [1.0] * num_objectives
    else:
        w = _finite_vector(weights, "weighting.weights", size=num_objectives)
        if name == "lagrangian" and not np.all(w == 1.0):
            raise RewardConfigError(
                f"weighting.weights: the lagrangian strategy's weights are its multipliers; per-objective weights "
                f"{w.tolist()} would be ignored (leave them at 1, use base and constraints instead)"
            )
    if name == "static":
        return StaticWeights(weights)
    if name == "hypervolume":
        return HypervolumeWeighting(weights, **opts)
    if name == "gradient":
        if num_objectives < 2:
            raise RewardConfigError("weighting: gradient weighting needs at least two objectives, got one")
        return GradientWeighting(weights, names=names, **opts)
    raw = opts.pop("constraints", None)
    if not raw or not isinstance(raw, list | tuple):
        raise RewardConfigError("weighting.constraints: the lagrangian strategy needs a non-empty list of constraints")
    constraints = []
    for i, c in enumerate(raw):
        where = f"weighting.constraints[{i}]"
        if not isinstance(c, Mapping):
            raise RewardConfigError(f"{where}: must be a mapping {{objective, threshold, direction}}, got {c!r}")
        extra = sorted(set(c) - {"objective", "threshold", "direction"})
        if extra:
            raise RewardConfigError(f"{where}: unknown key(s) {extra}; allowed: objective, threshold, direction")
        if "objective" not in c or "threshold" not in c:
            raise RewardConfigError(f"{where}: needs objective and threshold")
        constraints.append(
            Constraint(
                _objective_index(c["objective"], names, f"{where}.objective"),
                c["threshold"],
                c.get("direction", "lower"),
            )
        )
    base = opts.pop("base", None)
    if base is None:
        base_idx: int | list[int] | None = None
    elif isinstance(base, list | tuple):
        base_idx = [_objective_index(b, names, "weighting.base") for b in base]
    else:
        base_idx = _objective_index(base, names, "weighting.base")
    return LagrangianWeighting(num_objectives, constraints, base=base_idx, names=names, **opts)
