"""Gradient-based weighting (Lu et al., arXiv 2509.11452): weights moved by mirror descent on per-objective
gradient influences."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from rewards.errors import RewardConfigError
from rewards.weighting.base import check_matrix, finite_vector, load_vector, to_numpy


def clip_gram(gram: np.ndarray, max_norm: float, norms: np.ndarray | None = None) -> np.ndarray:
    """The Gram matrix [K, K] of the gradients after each g_k is clipped to norm <= max_norm.

    Clipping scales g_k by c_k = min(1, max_norm / n_k), so G'_kj = c_k c_j G_kj. n_k [K] is the norm the clip
    measures: by default |g_k| = sqrt(G_kk); the authors (Lu et al., arXiv 2509.11452) clip the whole model's
    gradient and only then keep a band of layers, so pass the whole-model norms when G is the band's Gram matrix.
    """
    n = np.sqrt(np.clip(np.diag(gram), 0.0, None)) if norms is None else np.asarray(norms, dtype=np.float64)
    if n.shape != (gram.shape[0],) or not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"gradient norms must be {gram.shape[0]} finite non-negative numbers, got {n.tolist()}")
    c = np.minimum(1.0, np.divide(max_norm, n, out=np.ones_like(n), where=n > 0))
    return gram * c[:, None] * c[None, :]


def gradient_cosines(gram: np.ndarray) -> np.ndarray:
    """Cosine similarities [K, K] of the gradients from their Gram matrix (0 where a gradient is zero)."""
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    outer = norms[:, None] * norms[None, :]
    return np.divide(gram, outer, out=np.zeros_like(gram), where=outer > 0)


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(parameter_name: str) -> int | None:
    """The decoder layer a parameter belongs to (the N of ``...layers.N...``), None outside the layer stack."""
    match = _LAYER.search(parameter_name)
    return int(match.group(1)) if match else None


def in_layer_band(parameter_name: str, band: Sequence[int] | None) -> bool:
    """Whether a parameter takes part in the influence: every parameter when `band` is None, else those of layers
    band[0]..band[1] inclusive (the authors' target_layer_ids 10..25; embeddings, final norm and head excluded)."""
    if band is None:
        return True
    index = layer_index(parameter_name)
    return index is not None and band[0] <= index <= band[1]


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
    return exponentiated_step(w, gradient_influence(G), eta)


def exponentiated_step(weights: np.ndarray, influence: np.ndarray, eta: float) -> np.ndarray:
    """w' = softmax(log w + eta * I) [K]: the mirror-descent (exponentiated-gradient) step on the simplex."""
    with np.errstate(divide="ignore"):
        logits = np.log(np.asarray(weights, dtype=np.float64)) + float(eta) * np.asarray(influence, dtype=np.float64)
    logits -= logits[np.isfinite(logits)].max()
    e = np.exp(logits)
    return e / e.sum()


EtaSchedule = Literal["lr", "constant"]


def step_size(
    eta: float,
    schedule: EtaSchedule,
    regularization: float | None,
    learning_rate: float | None,
    peak_learning_rate: float | None,
) -> float:
    """The mirror-descent step size of one weight update (Lu et al., arXiv 2509.11452: eta_t = lr_t / lambda).

    ``regularization`` lambda given: eta_t = lr_t / lambda (needs `learning_rate`, the policy's current lr).
    Else ``schedule`` "lr": eta_t = eta * lr_t / peak lr, i.e. the authors' lr_t / lambda with lambda chosen so
    that eta_t = eta at the peak learning rate (their lr 1e-6 and lambda 1e-5 give eta = 0.1); it falls to 0
    with the schedule (and is 0 during warm-up from 0). "constant", or no learning rates known: eta.
    """
    if regularization is not None:
        if learning_rate is None:
            raise ValueError("gradient weighting with a regularization lambda needs the learner's learning rate")
        return float(learning_rate) / regularization
    if schedule == "lr" and learning_rate is not None and peak_learning_rate:
        return eta * float(learning_rate) / float(peak_learning_rate)
    return eta


class GradientWeighting:
    """Weights moved by mirror descent on per-objective gradient influences (Lu et al., arXiv 2509.11452).

    The learner computes, for each objective k, the policy-loss gradient g_k of the advantages from r_k alone
    (`RewardComposer.objective_advantages`) over the parameters of ``layer_band`` (all trainable parameters when
    None; the authors use layers 10..25 of their 36-layer model; with PEFT the band's adapter weights), and the
    norm of g_k over ALL trainable parameters, and passes them to ``update(R, gradients=[K, P],
    grad_norms=[K])`` (or ``gram=[K, K]``), before the step's advantages are composed, as the authors do. Each g_k
    is clipped to ``clip_norm`` (the authors' 1.0) by its whole-model norm (`clip_gram`); the influence is
    I_k = sum_j <g_k, g_j>. The weights move every ``update_interval`` steps by one `mirror_descent_step` on the
    influence averaged over the steps since the last move (``average_interval: true``, the authors' weight
    accumulation: gradients every step); ``average_interval: false`` computes gradients only on the moving
    steps (K extra backward passes once per interval instead of every step). Moving steps are those with
    (step + 1) % update_interval == 0 (the authors' 1-based global step % interval). The step size is
    `step_size`: eta following the learning-rate schedule by default (``eta_schedule``), or lr_t /
    ``regularization``; ``update(..., eta=...)`` overrides it for one call. The composite reward is
    sum_k w_k r_k with the composer's ordinary normalisation.

    The initial weights must be positive; they are normalised to sum 1 (mirror descent lives on the simplex;
    under group normalisation the overall scale of w does not matter). Orient every objective to be
    maximised (no negative weights).
    """

    name = "gradient"

    def __init__(
        self,
        weights: Sequence[float],
        eta: float | None = None,
        update_interval: int = 1,
        clip_norm: float | None = 1.0,
        names: Sequence[str] | None = None,
        eta_schedule: EtaSchedule = "lr",
        regularization: float | None = None,
        average_interval: bool = True,
        layer_band: Sequence[int] | None = None,
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
        if eta is not None and regularization is not None:
            raise RewardConfigError(
                "weighting.regularization: give eta or regularization (eta_t = lr_t / regularization), not both"
            )
        eta = 0.1 if eta is None else eta
        if not (isinstance(eta, int | float) and not isinstance(eta, bool) and math.isfinite(eta) and eta > 0):
            raise RewardConfigError(f"weighting.eta: must be a number > 0, got {eta!r}")
        if regularization is not None and not (
            isinstance(regularization, int | float) and math.isfinite(regularization) and regularization > 0
        ):
            raise RewardConfigError(f"weighting.regularization: must be a number > 0 or null, got {regularization!r}")
        if eta_schedule not in ("lr", "constant"):
            raise RewardConfigError(f"weighting.eta_schedule: {eta_schedule!r} is not allowed; choose lr or constant")
        if isinstance(update_interval, bool) or not isinstance(update_interval, int) or update_interval < 1:
            raise RewardConfigError(f"weighting.update_interval: must be an integer >= 1, got {update_interval!r}")
        if clip_norm is not None and not (isinstance(clip_norm, int | float) and clip_norm > 0):
            raise RewardConfigError(f"weighting.clip_norm: must be a number > 0 or null, got {clip_norm!r}")
        if not isinstance(average_interval, bool):
            raise RewardConfigError(f"weighting.average_interval: must be true or false, got {average_interval!r}")
        if layer_band is not None and not (
            isinstance(layer_band, list | tuple)
            and len(layer_band) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in layer_band)
            and 0 <= layer_band[0] <= layer_band[1]
        ):
            raise RewardConfigError(
                f"weighting.layer_band: must be [first, last] layer indices with 0 <= first <= last, or null; "
                f"got {layer_band!r}"
            )
        self._w = w / w.sum()
        self.eta = float(eta)
        self.eta_schedule: EtaSchedule = eta_schedule
        self.regularization = None if regularization is None else float(regularization)
        self.update_interval = update_interval
        self.average_interval = average_interval
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.layer_band: tuple[int, int] | None = None if layer_band is None else (layer_band[0], layer_band[1])
        self._updates = 0
        self._influence = np.zeros(w.size)
        self._pending = np.zeros(w.size)
        self._pending_count = 0
        self._cosines = np.eye(w.size)
        self._last_eta = 0.0

    def weights(self) -> np.ndarray:
        return self._w.copy()

    def moves_at(self, step: int) -> bool:
        """Whether the weights move at this step: (step + 1) % update_interval == 0."""
        return (int(step) + 1) % self.update_interval == 0

    def wants_gradients(self, step: int) -> bool:
        return self.average_interval or self.moves_at(step)

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
        if G.shape != (self._w.size, self._w.size) or not np.all(np.isfinite(G)):
            raise ValueError(f"gram must be a finite [{self._w.size}, {self._w.size}] matrix, got shape {G.shape}")
        self._cosines = gradient_cosines(G)
        if self.clip_norm is not None:
            norms = context.get("grad_norms")
            G = clip_gram(G, self.clip_norm, None if norms is None else to_numpy(norms, "grad_norms").reshape(-1))
        self._pending = self._pending + gradient_influence(G)
        self._pending_count += 1
        if step is not None and not self.moves_at(step):
            return
        if step is None and self.average_interval and self._pending_count < self.update_interval:
            return
        influence = self._pending / self._pending_count
        if context.get("eta") is not None:
            eta = float(context["eta"])
        else:
            eta = step_size(
                self.eta,
                self.eta_schedule,
                self.regularization,
                context.get("learning_rate"),
                context.get("peak_learning_rate"),
            )
        self._w = exponentiated_step(self._w, influence, eta)
        self._influence = influence
        self._last_eta = eta
        self._pending = np.zeros(self._w.size)
        self._pending_count = 0
        self._updates += 1

    def metrics(self) -> dict[str, float]:
        out = {f"gradient/influence/{name}": float(v) for name, v in zip(self.names, self._influence)}
        for i, a in enumerate(self.names):
            for j in range(i + 1, len(self.names)):
                out[f"gradient/cosine/{a}/{self.names[j]}"] = float(self._cosines[i, j])
        out["gradient/updates"] = float(self._updates)
        out["gradient/eta"] = self._last_eta
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self._w.tolist(),
            "updates": self._updates,
            "influence": self._influence.tolist(),
            "pending": self._pending.tolist(),
            "pending_count": self._pending_count,
            "cosines": self._cosines.tolist(),
            "last_eta": self._last_eta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = self._w.size
        self._w = load_vector(state, "weights", k)
        self._influence = load_vector(state, "influence", k)
        self._updates = int(state["updates"])
        # keys added later: a checkpoint written before them resumes with an empty accumulation
        self._pending = load_vector(state, "pending", k) if "pending" in state else np.zeros(k)
        self._pending_count = int(state.get("pending_count", 0))
        cosines = np.asarray(state.get("cosines", np.eye(k)), dtype=np.float64)
        self._cosines = cosines if cosines.shape == (k, k) else np.eye(k)
        self._last_eta = float(state.get("last_eta", 0.0))
