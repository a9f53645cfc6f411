"""Weighting strategies: how the K objectives' weights (and the signal's scale) are chosen each step.

Protocol
--------
Every strategy implements four methods:

* ``weights() -> w[K]``: the current weights (float64). The composer's composite reward is sum_k w_k R[:, k].
* ``update(matrix, **context)``: sees the step's per-objective reward matrix R[N, K] (gathered over all
  processes, masked, NaN = not applicable) and whatever else the learner hands it, and sets the state used
  from then on. Context keys a strategy does not use are ignored. Keys in use: ``step`` (int, the number of
  optimiser steps taken so far), ``eval_point`` ([K] per-objective means of a held-out pass, with an empty
  matrix [0, K]; hypervolume), ``gradients`` ([K, P] per-objective policy-loss gradients) or ``gram`` ([K, K]
  their Gram matrix), ``grad_norms`` ([K] each gradient's norm over all trainable parameters),
  ``learning_rate`` and ``peak_learning_rate`` (the policy's current and configured lr) and ``eta`` (gradient).
* ``state_dict()`` / ``load_state_dict(state)``: the mutable state as JSON-ready lists and floats (no NaN), so
  a resumed run continues identically.

and may implement these optional hooks; the composer uses the default when a hook is absent:

* ``reward_scale() -> float`` (default 1): composite rewards are multiplied by it BEFORE normalisation.
* ``advantage_scale() -> float`` (default 1): advantages are multiplied by it AFTER normalisation.
* ``combine(matrix, group_size, normalization) -> (rewards [N], advantages [N]) | None``: replaces the
  composer's weighted-sum-then-normalise path (used by the Lagrangian mix); None falls back to it.
* ``wants_gradients(step) -> bool`` (default False): whether the learner should compute per-objective
  gradients (K extra backward passes) at this step and pass them to ``update`` as ``gradients=`` or ``gram=``.
* ``wants_eval(step) -> bool`` (default False): whether the learner should score the policy on held-out
  prompts at this step and pass the per-objective means to ``update`` as ``eval_point=``.
* ``metrics() -> dict[str, float]`` (default {}): extra scalars to log (meta factor, multipliers, ...).

Order of calls per training step (alignment/learners/grpo.py): ``composer.score`` per process -> gather
R[N, K] -> measurements of the policy as it stands, handed over BEFORE this step is composed, as the authors
do: ``update([0, K], eval_point=...)`` when ``wants_eval(step)`` (Lu et al. validate after every update and
scale the next step), ``update(R, gradients=..., ...)`` when ``wants_gradients(step)`` (Lu et al. reweight a
step from its own gradients) -> ``composer.compose(R, G)`` (uses the current state) ->
``composer.update(R, step=...)`` (batch statistics: the Lagrange multipliers, the batch-source hypervolume
point; they set the next step's state). That update only reads this step's rollouts, which the policy step
does not change, so calling it before or after the optimiser step gives the same numbers. Strategies are
deterministic given the same inputs, so every rank computes the same weights from the same gathered matrix.

Strategies (one module each)
----------------------------
* `StaticWeights` (``static``): fixed linear scalarisation.
* `HypervolumeWeighting` (``hypervolume``): fixed preference weights, signal scaled by a hypervolume meta factor
  (Lu et al., arXiv 2509.11452, section "hypervolume-guided").
* `GradientWeighting` (``gradient``): weights moved by mirror descent on gradient influences (Lu et al., arXiv
  2509.11452, "gradient-based").
* `LagrangianWeighting` (``lagrangian``): constraint thresholds with Lagrange multipliers as weights (Moskovitz et
  al., ICLR 2024, "Confronting Reward Model Overoptimization with Constrained RLHF"; safe-rlhf's PPO-Lag as an
  option).

The protocol and the helpers the strategies share live in ``base``; `build_weighting` (``factory``) builds any
of them from config options, raising `RewardConfigError` naming a bad option.
"""

from rewards.weighting.base import WeightingStrategy
from rewards.weighting.factory import build_weighting
from rewards.weighting.gradient import (
    GradientWeighting,
    clip_gram,
    exponentiated_step,
    gradient_cosines,
    gradient_influence,
    in_layer_band,
    layer_index,
    mirror_descent_step,
    step_size,
)
from rewards.weighting.hypervolume import HypervolumeWeighting, Placement, meta_factor
from rewards.weighting.lagrangian import (
    LAMBDA_CEILING,
    Constraint,
    Direction,
    LagrangianForm,
    LagrangianWeighting,
    Parametrization,
    direction_signs,
    initial_multipliers,
    minibatch_means,
    mixed_advantages,
    multiplier_step,
    multiplier_values,
    safe_rlhf_advantages,
    squash,
    unsquashed_advantages,
)
from rewards.weighting.static import StaticWeights

__all__ = [
    "LAMBDA_CEILING",
    "Constraint",
    "Direction",
    "GradientWeighting",
    "HypervolumeWeighting",
    "LagrangianForm",
    "LagrangianWeighting",
    "Parametrization",
    "Placement",
    "StaticWeights",
    "WeightingStrategy",
    "build_weighting",
    "clip_gram",
    "direction_signs",
    "exponentiated_step",
    "gradient_cosines",
    "gradient_influence",
    "in_layer_band",
    "initial_multipliers",
    "layer_index",
    "meta_factor",
    "minibatch_means",
    "mirror_descent_step",
    "mixed_advantages",
    "multiplier_step",
    "multiplier_values",
    "safe_rlhf_advantages",
    "squash",
    "step_size",
    "unsquashed_advantages",
]
