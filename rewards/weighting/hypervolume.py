"""Hypervolume-guided meta factor (Lu et al., arXiv 2509.11452): fixed preference weights, the signal scaled
by how much the policy's scores grow a Pareto buffer's hypervolume."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from rewards.errors import RewardConfigError
from rewards.pareto import hypervolume_contributions, hypervolume_improvement, non_dominated
from rewards.weighting.base import check_matrix, finite_vector, load_vector, nanmean_columns, to_numpy

Placement = Literal["advantages", "rewards"]


def meta_factor(hvc: float) -> float:
    """Meta reward m = 0.5 + 1.5 * tanh(max(HVC, 0)) in [0.5, 2) (Lu et al., arXiv 2509.11452).

    No improvement gives 0.5 (the signal is halved), a large one approaches 2.
    """
    return 0.5 + 1.5 * math.tanh(max(float(hvc), 0.0))


class HypervolumeWeighting:
    """Fixed preference weights; the signal of the next step is scaled by a hypervolume meta factor m.

    Lu et al. (arXiv 2509.11452), hypervolume-guided weighting. A Pareto buffer B holds per-objective score
    vectors, every objective oriented to be maximised. Each ``update(R[N, K], eval_point=None)``:

    1. measures p_t [K]: ``eval_point`` when the learner passes one, else the batch's per-objective nanmean
       (``source="batch"``, a cheap estimate). ``source="eval"`` ignores batches and waits for eval points:
       `wants_eval` asks the learner for a held-out pass (every ``eval_every`` steps, counting from step 0,
       i.e. before the first update, which gives p0; the authors validate before training and after every
       step), which it runs on the policy as it stands and hands over with an empty matrix before composing
       the step, so m from the policy after update t scales step t + 1, as in the authors' loop. A p_t with a
       NaN objective (no value in the batch or eval set) is skipped.
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
        eval_every: int | None = None,
    ) -> None:
        self._w = finite_vector(weights, "weighting.weights")
        k = self._w.size
        if scales is not None:
            s = finite_vector(scales, "weighting.scales", size=k)
            if np.any(s <= 0):
                raise RewardConfigError(f"weighting.scales: must all be > 0, got {s.tolist()}")
            self._scales: np.ndarray | None = s
        else:
            self._scales = None
        self._ref = finite_vector(reference, "weighting.reference", size=k) if reference is not None else None
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
        if eval_every is not None:
            if source != "eval":
                raise RewardConfigError("weighting.eval_every: applies to source: eval (held-out passes) only")
            if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
                raise RewardConfigError(f"weighting.eval_every: must be an integer >= 1, got {eval_every!r}")
        self.eval_every = 1 if eval_every is None else eval_every
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

    def wants_eval(self, step: int) -> bool:
        """Whether the learner should measure p_t on held-out prompts at this step (source eval only)."""
        return self.source == "eval" and int(step) % self.eval_every == 0

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
        check_matrix(matrix, self._w.size)
        if self._scales is None:
            self._observe(matrix)
        eval_point = context.get("eval_point")
        if eval_point is not None:
            point = to_numpy(eval_point, "eval_point").reshape(-1)
            if point.shape != (self._w.size,):
                raise ValueError(f"eval_point has {point.size} entries, expected {self._w.size}")
        elif self.source == "eval":
            return
        else:
            point = nanmean_columns(matrix)
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
        self._w = load_vector(state, "weights", k)
        self._m = float(state["meta"])
        self._last_hvc = float(state["last_hvc"])
        self._ref = None if state["reference"] is None else load_vector(state, "reference", k)
        buffer = np.asarray(state["buffer"], dtype=np.float64).reshape(-1, k)
        self._buffer = buffer
        self._count = load_vector(state, "count", k)
        self._mean = load_vector(state, "mean", k)
        self._m2 = load_vector(state, "m2", k)
        self._measurements = int(state["measurements"])
        self._skipped = int(state["skipped"])
