"""Each weighting strategy does what its paper says, on a bandit-sized GRPO policy.

The policy is a softmax over a few arms (one prompt, so every group samples the same distribution); each arm
has a fixed value per objective. A step samples P groups of G arms, builds R[N, K], lets the composer turn it
into advantages (group normalisation, as GRPO), and takes the policy-gradient step of GRPO's surrogate at
ratio 1: theta += lr * mean_i A_i * grad log pi(a_i), with grad log pi(a) = onehot(a) - pi. Then the
composer's strategy sees the step's matrix (and, for gradient weighting, the per-objective gradients).
"""

from __future__ import annotations

import numpy as np
import pytest

from rewards.composer import Objective, RewardComposer
from rewards.weighting import HypervolumeWeighting, StaticWeights, build_weighting, meta_factor

GROUPS, GROUP_SIZE = 4, 8


class Unused:
    """The toy never scores text: it hands the composer reward matrices directly."""

    def __call__(self, prompts, completions, **columns):  # pragma: no cover - never called
        raise AssertionError("the toy composes matrices, it does not score")


def composer(strategy, names: list[str]) -> RewardComposer:
    return RewardComposer([Objective(n, Unused()) for n in names], strategy, "group")


def softmax(theta: np.ndarray) -> np.ndarray:
    e = np.exp(theta - theta.max())
    return e / e.sum()


def score_gradients(arms: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """grad_theta log pi(a_i) for every sample: [N, A]."""
    return np.eye(pi.size)[arms] - pi


def run_bandit(
    comp: RewardComposer, values: np.ndarray, steps: int, lr: float, seed: int, with_gradients: bool = False
) -> dict[str, list]:
    """Train the softmax policy; return per step the batch mean of each objective, the weights and pi."""
    rng = np.random.default_rng(seed)
    theta = np.zeros(values.shape[0])
    history: dict[str, list] = {"means": [], "weights": [], "pi": []}
    for step in range(1, steps + 1):
        pi = softmax(theta)
        arms = rng.choice(pi.size, size=GROUPS * GROUP_SIZE, p=pi)
        matrix = values[arms]
        composition = comp.compose(matrix, GROUP_SIZE)
        scores = score_gradients(arms, pi)
        theta = theta + lr * (composition.advantages[:, None] * scores).mean(axis=0)
        context = {"step": step}
        if with_gradients and comp.wants_gradients(step):
            per_objective = comp.objective_advantages(matrix, GROUP_SIZE)  # [N, K]
            context["gradients"] = per_objective.T @ scores / len(arms)  # [K, A]: each objective's policy gradient
        comp.update(matrix, **context)
        history["means"].append(matrix.mean(axis=0))
        history["weights"].append(composition.weights)
        history["pi"].append(pi)
    return history


def test_lagrangian_holds_the_constraint_where_static_weights_overshoot() -> None:
    """Constrained RLHF (Moskovitz et al., 2024): maximise reward s.t. cost <= 0.45."""
    reward = np.array([0.1, 0.5, 0.8, 1.0])
    cost = np.array([0.0, 0.3, 0.6, 1.0])
    values = np.stack([reward, cost], axis=1)
    names, threshold = ["reward", "cost"], 0.45
    static = composer(StaticWeights([1.0, -0.3]), names)
    lagrangian = composer(
        build_weighting(
            "lagrangian",
            2,
            names,
            constraints=[{"objective": "cost", "threshold": threshold, "direction": "upper"}],
            base="reward",
            lr=0.5,
        ),
        names,
    )
    tail = slice(200, 300)
    static_cost = np.mean([m[1] for m in run_bandit(static, values, 300, lr=0.5, seed=1)["means"][tail]])
    lag_history = run_bandit(lagrangian, values, 300, lr=0.5, seed=1)
    lag_cost = np.mean([m[1] for m in lag_history["means"][tail]])
    lag_reward = np.mean([m[0] for m in lag_history["means"][tail]])
    assert static_cost > 0.85, "static weights drive the policy to the costliest arm"
    assert abs(lag_cost - threshold) < 0.1, f"the Lagrangian keeps cost near its threshold, got {lag_cost:.3f}"
    assert lag_reward > 0.45, "and still earns reward (not collapsed onto the zero-cost arm)"


@pytest.mark.parametrize(
    ("third", "gains"),
    [
        (np.array([0.5, 0.5, 1.0, 0.0]), True),  # high where both others are: its gradient helps them
        (np.array([0.0, 0.0, 0.0, 1.0]), False),  # high only on the arm both others hate: it hurts them
    ],
    ids=["helper", "saboteur"],
)
def test_gradient_weights_move_toward_the_objective_that_helps_the_others(third: np.ndarray, gains: bool) -> None:
    """Lu et al. (arXiv 2509.11452): an objective whose gradient aligns with the others gains weight."""
    a = np.array([1.0, 0.0, 0.7, 0.0])  # a and b conflict: each prefers its own arm, both like arm 2
    b = np.array([0.0, 1.0, 0.7, 0.0])
    values = np.stack([third, a, b], axis=1)
    names = ["third", "a", "b"]
    comp = composer(build_weighting("gradient", 3, names, eta=0.5, clip_norm=None), names)
    history = run_bandit(comp, values, 40, lr=0.3, seed=2, with_gradients=True)
    first, last = history["weights"][0], history["weights"][-1]
    np.testing.assert_allclose(first, [1 / 3] * 3)
    if gains:
        assert last[0] > 0.7 and last[1] < first[1] and last[2] < first[2]
    else:
        assert last[0] < 0.2 and last[1] > first[1] and last[2] > first[2]


def test_hypervolume_meta_factor_moves_the_grpo_update_only_when_placed_on_advantages() -> None:
    """The trap of SPECS 2a: the authors scale rewards by m; GRPO's group normalisation then cancels it."""
    values = np.array([[0.1, 0.9], [0.6, 0.6], [0.9, 0.2]])
    names = ["x", "y"]
    rng = np.random.default_rng(3)
    pi = softmax(np.zeros(3))
    arms = rng.choice(3, size=GROUPS * GROUP_SIZE, p=pi)
    matrix, scores = values[arms], score_gradients(arms, pi)

    def update(strategy) -> np.ndarray:
        return (composer(strategy, names).compose(matrix, GROUP_SIZE).advantages[:, None] * scores).mean(axis=0)

    def primed(placement: str) -> HypervolumeWeighting:
        hv = HypervolumeWeighting([1.0, 1.0], scales=[1.0, 1.0], placement=placement)
        hv.update(np.tile([0.0, 0.0], (2, 1)))
        hv.update(np.tile([1.0, 1.0], (2, 1)))  # a hypervolume gain of 1: m = meta_factor(1) ~ 1.64
        return hv

    m = meta_factor(1.0)
    assert m == pytest.approx(primed("advantages").meta()) and m > 1.5
    plain = update(StaticWeights([1.0, 1.0]))
    assert np.linalg.norm(plain) > 1e-3
    np.testing.assert_allclose(update(primed("rewards")), plain, rtol=1e-3)  # m cancelled: no effect at all
    np.testing.assert_allclose(update(primed("advantages")), m * plain, rtol=1e-9)  # m reaches the update
