"""Gradient-based weighting (Lu et al., arXiv 2509.11452): weights moved by mirror descent on per-objective
gradient influences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewards.errors import RewardConfigError
from rewards.weighting.base import check_matrix, finite_vector, load_vector, to_numpy


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
        g = to_numpy(grads, "grads")
        if g.ndim != 2 or g.shape[0] != w.size:
            raise ValueError(f"grads must have shape [K={w.size}, P], got {g.shape}")
        G = g @ g.T
    else:
        G = to_numpy(gram, "gram")
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
        w = finite_vector(weights, "weighting.weights")
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
        check_matrix(np.asarray(matrix), self._w.size)
        grads, gram = context.get("gradients"), context.get("gram")
        if grads is None and gram is None:
            return
        step = context.get("step")
        if step is not None and not self.wants_gradients(step):
            return
        if grads is not None and gram is None:
            g = to_numpy(grads, "gradients")
            gram = g @ g.T
        G = to_numpy(gram, "gram")
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
        self._w = load_vector(state, "weights", self._w.size)
        self._influence = load_vector(state, "influence", self._w.size)
        self._updates = int(state["updates"])
