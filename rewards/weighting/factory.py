"""`build_weighting`: any weighting strategy from config options, with errors naming the bad option."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rewards.errors import RewardConfigError
from rewards.weighting.base import (
    WeightingStrategy,
    finite_vector,
)
from rewards.weighting.gradient import GradientWeighting
from rewards.weighting.hypervolume import HypervolumeWeighting
from rewards.weighting.lagrangian import Constraint, LagrangianWeighting
from rewards.weighting.static import StaticWeights

_OPTIONS: dict[str, tuple[str, ...]] = {
    "static": ("weights",),
    "hypervolume": (
        "weights",
        "scales",
        "reference",
        "buffer_size",
        "placement",
        "maximize",
        "source",
        "eval_every",
    ),
    "gradient": (
        "weights",
        "eta",
        "eta_schedule",
        "regularization",
        "update_interval",
        "average_interval",
        "clip_norm",
        "layer_band",
    ),
    "lagrangian": (
        "weights",
        "constraints",
        "base",
        "form",
        "lr",
        "momentum",
        "init",
        "max_grad_norm",
        "lambda_max",
        "seed",
        "minibatches",
        "epochs",
    ),
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
      weights' signs), ``source`` batch|eval, ``eval_every`` (1; source eval only).
    * gradient: ``weights`` (positive), ``eta`` (0.1) or ``regularization`` (eta_t = lr_t / regularization),
      ``eta_schedule`` lr|constant (lr), ``update_interval`` (1), ``average_interval`` (true), ``clip_norm``
      (1.0 or null), ``layer_band`` [first, last] or null (all trainable parameters).
    * lagrangian: ``weights`` must be absent or all 1 (the multipliers are the weights); ``constraints``
      (required) - a list of {objective: name, threshold: float, direction:
      lower|upper|equal (default lower)}; ``base`` - an objective name, a list of names, or null (KL-only);
      ``form`` moskovitz|unsquashed|safe_rlhf; ``lr`` (0.1); ``momentum`` (form default: 0.1, 0.1, 0.0);
      ``init`` (initial multiplier; form default: a seeded N(0, 0.01) draw pre-squash, 0.5, 1.0);
      ``max_grad_norm`` (form default 0.5, 0.5, null = no clip); ``lambda_max``; ``seed`` (0; the learner
      passes the recipe's); ``minibatches`` and ``epochs`` (1, 1: multiplier steps per update).

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
        w = finite_vector(weights, "weighting.weights", size=num_objectives)
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
