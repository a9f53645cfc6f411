"""Weighting strategies: hypervolume meta factor, gradient mirror descent, Lagrange multipliers, state, factory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.composer import Objective, RewardComposer
from rewards.errors import RewardConfigError
from rewards.normalization import group_advantages, objective_advantages
from rewards.weighting import (
    Constraint,
    GradientWeighting,
    HypervolumeWeighting,
    LagrangianWeighting,
    StaticWeights,
    build_weighting,
    clip_gram,
    in_layer_band,
    layer_index,
    meta_factor,
    mirror_descent_step,
    mixed_advantages,
    multiplier_step,
    safe_rlhf_advantages,
    squash,
    step_size,
    unsquashed_advantages,
)


def batch(*point: float, rows: int = 2) -> np.ndarray:
    """A reward matrix whose per-objective batch means are `point`."""
    return np.tile(np.asarray(point, dtype=np.float64), (rows, 1))


class Column:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, prompts, completions, **columns):
        return [float(c) for c in columns[self.name]]


# --------------------------------------------------------------------------------------------------------------
# Hypervolume-guided meta factor
# --------------------------------------------------------------------------------------------------------------


def test_meta_factor() -> None:
    assert meta_factor(0.0) == 0.5 and meta_factor(-3.0) == 0.5
    assert meta_factor(1.0) == pytest.approx(0.5 + 1.5 * math.tanh(1.0))
    assert 1.999 < meta_factor(50.0) <= 2.0


def test_hypervolume_buffer_by_hand() -> None:
    hv = HypervolumeWeighting([1.0, 1.0], scales=[1.0, 1.0])
    assert hv.meta() == 1.0 and hv.advantage_scale() == 1.0
    hv.update(batch(0.0, 0.0))  # p0: first buffer element and reference point; nothing to compare yet
    np.testing.assert_array_equal(hv.reference(), [0.0, 0.0])
    np.testing.assert_array_equal(hv.buffer(), [[0.0, 0.0]])
    assert hv.meta() == 1.0
    hv.update(batch(1.0, 2.0))  # HVC = 1 * 2
    assert hv.meta() == pytest.approx(meta_factor(2.0)) and hv.advantage_scale() == hv.meta()
    np.testing.assert_array_equal(hv.buffer(), [[1.0, 2.0]])  # p0 is dominated and dropped (adds no volume)
    hv.update(batch(2.0, 1.0))  # HV({(1,2),(2,1)}) - HV({(1,2)}) = 3 - 2
    assert hv.meta() == pytest.approx(meta_factor(1.0))
    assert len(hv.buffer()) == 2
    hv.update(batch(0.5, 0.5))  # dominated: no improvement, m = 0.5, not added
    assert hv.meta() == 0.5 and len(hv.buffer()) == 2
    hv.update(batch(9.0, -1.0))  # not strictly better than the reference in every objective: contributes 0
    assert hv.meta() == 0.5 and len(hv.buffer()) == 2
    assert hv.reward_scale() == 1.0


def test_hypervolume_eval_point_source_and_nan() -> None:
    hv = HypervolumeWeighting([1.0, 1.0], scales=[1.0, 1.0], source="eval")
    hv.update(batch(5.0, 5.0))  # batches are ignored with source="eval"
    assert hv.reference() is None
    hv.update(batch(5.0, 5.0), eval_point=[0.0, 0.0])
    hv.update(batch(-5.0, -5.0), eval_point=[0.5, 0.5])
    assert hv.meta() == pytest.approx(meta_factor(0.25))
    batch_hv = HypervolumeWeighting([1.0, 1.0], scales=[1.0, 1.0])
    batch_hv.update(batch(0.0, 0.0))
    batch_hv.update(np.array([[1.0, np.nan], [1.0, np.nan]]))  # no value for objective 2: skipped
    assert batch_hv.meta() == 1.0 and batch_hv.metrics()["hv/buffer_size"] == 1.0


def test_hypervolume_asks_for_held_out_passes_on_its_cadence() -> None:
    every = HypervolumeWeighting([1.0, 1.0], source="eval", eval_every=3)
    assert [every.wants_eval(step) for step in range(7)] == [True, False, False, True, False, False, True]
    assert not HypervolumeWeighting([1.0, 1.0]).wants_eval(0)  # source batch measures batches instead
    assert _composer(every).wants_eval(3) and not _composer(StaticWeights([1.0, 1.0])).wants_eval(0)
    # an eval point comes with an empty matrix before the step is composed; the batch update after it only
    # feeds the running scales
    hv = HypervolumeWeighting([1.0, 1.0], scales=[1.0, 1.0], source="eval")
    hv.update(np.empty((0, 2)), step=0, eval_point=[0.0, 0.0])
    hv.update(batch(3.0, 3.0), step=0)
    hv.update(np.empty((0, 2)), step=1, eval_point=[1.0, 0.5])
    assert hv.meta() == pytest.approx(meta_factor(0.5))


def test_hypervolume_given_reference_orientation_and_cap() -> None:
    # weight -1 on objective 2: it is minimised (oriented by the weight's sign unless `maximize` is given)
    hv = HypervolumeWeighting([1.0, -1.0], scales=[1.0, 2.0], reference=[0.0, 10.0], buffer_size=2)
    hv.update(batch(1.0, 6.0))  # box (1 - 0) * (10 - 6) / 2 = 2
    assert hv.meta() == pytest.approx(meta_factor(2.0))
    # normalised (orient / scale): p1 = (1, -3), p2 = (3, -4.5), ref (0, -5): box 3 * 0.5 minus overlap 1 * 0.5
    hv.update(batch(3.0, 9.0))
    assert hv.meta() == pytest.approx(meta_factor(1.0))
    hv.update(batch(2.0, 8.5))  # (2, -4.25): box 2 * 0.75 minus the 1.25 already covered
    assert hv.meta() == pytest.approx(meta_factor(0.25))
    # three non-dominated points, cap 2: exclusive contributions 1, 0.5, 0.25 -> the newest point goes
    np.testing.assert_array_equal(hv.buffer(), [[1.0, 6.0], [3.0, 9.0]])
    explicit = HypervolumeWeighting([1.0, 1.0], scales=[1.0, 1.0], reference=[0.0, 0.0], maximize=[True, False])
    explicit.update(batch(1.0, -1.0))
    assert explicit.meta() == pytest.approx(meta_factor(1.0))


def test_hypervolume_running_std_scales() -> None:
    hv = HypervolumeWeighting([1.0, 1.0])
    np.testing.assert_array_equal(hv.scales(), [1.0, 1.0])
    rng = np.random.default_rng(3)
    seen = []
    for _ in range(4):
        m = rng.normal(size=(8, 2)) * [1.0, 50.0]
        m[rng.random(size=m.shape) < 0.2] = np.nan
        seen.append(m)
        hv.update(m)
    allrows = np.vstack(seen)
    expected = [np.nanstd(allrows[:, k], ddof=1) for k in range(2)]
    np.testing.assert_allclose(hv.scales(), expected, rtol=1e-12)


def _composer(weighting, normalization="group") -> RewardComposer:
    return RewardComposer([Objective("a", Column("a")), Objective("b", Column("b"))], weighting, normalization)


def test_trap_reward_placement_cancels_under_group_normalisation() -> None:
    """The authors multiply rewards by m; GRPO's group std normalisation cancels it. Advantages placement works."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(16, 2))
    plain = _composer(StaticWeights([1.0, 0.5])).compose(matrix, 4)
    placed = {}
    for placement in ("rewards", "advantages"):
        hv = HypervolumeWeighting([1.0, 0.5], scales=[1.0, 1.0], placement=placement)
        hv.update(batch(0.0, 0.0))
        hv.update(batch(1.0, 1.0))  # HVC = 1 -> m ~ 1.64
        assert hv.meta() == pytest.approx(meta_factor(1.0))
        placed[placement] = _composer(hv).compose(matrix, 4)
    m = meta_factor(1.0)
    # rewards placement: the composite rewards are scaled, the advantages are not (up to the 1e-4 in the std)
    np.testing.assert_allclose(placed["rewards"].rewards, m * plain.rewards, rtol=1e-12)
    np.testing.assert_allclose(placed["rewards"].advantages, plain.advantages, rtol=1e-3)
    assert not np.allclose(placed["rewards"].advantages, m * plain.advantages, rtol=0.1)
    # advantages placement: exactly m times the plain advantages
    np.testing.assert_allclose(placed["advantages"].advantages, m * plain.advantages, rtol=1e-12)
    np.testing.assert_allclose(placed["advantages"].rewards, plain.rewards, rtol=1e-12)
    assert placed["advantages"].metrics["advantage_scale"] == pytest.approx(m)
    # the same cancellation for batch and decoupled normalisation; centring only ("none", like RLOO) feels m
    for normalization, cancels in (("batch", True), ("decoupled", True), ("none", False)):
        hv = HypervolumeWeighting([1.0, 0.5], scales=[1.0, 1.0], placement="rewards")
        hv.update(batch(0.0, 0.0))
        hv.update(batch(1.0, 1.0))
        base = _composer(StaticWeights([1.0, 0.5]), normalization).compose(matrix, 4).advantages
        scaled = _composer(hv, normalization).compose(matrix, 4).advantages
        np.testing.assert_allclose(scaled, base if cancels else m * base, rtol=1e-3)


# --------------------------------------------------------------------------------------------------------------
# Gradient-based weighting
# --------------------------------------------------------------------------------------------------------------


def test_mirror_descent_by_hand() -> None:
    grads = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])  # Gram row sums (influence): 1, 1, -1
    w = mirror_descent_step([1 / 3, 1 / 3, 1 / 3], grads, eta=0.1)
    e = np.exp([0.1, 0.1, -0.1])
    np.testing.assert_allclose(w, e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(mirror_descent_step([1 / 3] * 3, gram=grads @ grads.T, eta=0.1), w, rtol=1e-12)
    # two objectives, unequal start: w' ~ w * exp(eta * I)
    g = np.array([[2.0, 0.0], [1.0, 1.0]])  # G = [[4, 2], [2, 2]] -> I = [6, 4]
    w2 = mirror_descent_step([0.25, 0.75], g, eta=0.5)
    raw = np.array([0.25 * math.exp(3.0), 0.75 * math.exp(2.0)])
    np.testing.assert_allclose(w2, raw / raw.sum(), rtol=1e-12)


def test_clipping_and_aligned_objective_gains() -> None:
    g = np.array([[3.0, 4.0], [0.0, 0.5]])
    clipped = np.array([[0.6, 0.8], [0.0, 0.5]])
    np.testing.assert_allclose(clip_gram(g @ g.T, 1.0), clipped @ clipped.T, rtol=1e-12)
    np.testing.assert_allclose(
        mirror_descent_step([0.5, 0.5], g, max_norm=1.0), mirror_descent_step([0.5, 0.5], clipped), rtol=1e-12
    )
    # g1 = g2 + g3 with g2 orthogonal to g3: I = [4, 2, 2], so objective 1 gains
    w = mirror_descent_step([1 / 3] * 3, np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    assert w[0] > 1 / 3 > w[1] and w[1] == pytest.approx(w[2])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=5),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.floats(min_value=1e-3, max_value=1.0),
)
def test_weight_ratio_follows_influence(k: int, seed: int, eta: float) -> None:
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(k, 6))
    w = rng.dirichlet(np.ones(k))
    new = mirror_descent_step(w, grads, eta)
    influence = (grads @ grads.T).sum(axis=1)
    assert new.sum() == pytest.approx(1.0)
    ratio = new / w
    order = np.argsort(influence)
    assert np.all(np.diff(ratio[order]) >= -1e-12)  # more influence, more growth
    top = int(np.argmax(influence))
    if np.ptp(influence) > 1e-9:
        assert new[top] > w[top]  # the objective most aligned with the others gains weight


def test_gradient_strategy_sparse_interval_and_skips() -> None:
    """average_interval false: gradients only on moving steps ((step + 1) % interval == 0), one step each."""
    gw = GradientWeighting([1.0, 3.0], eta=0.1, update_interval=2, clip_norm=None, average_interval=False)
    np.testing.assert_allclose(gw.weights(), [0.25, 0.75])
    m = batch(0.0, 0.0)
    assert not gw.wants_gradients(0) and gw.wants_gradients(1) and not gw.wants_gradients(2)
    gw.update(m, step=1)  # no gradients: unchanged
    gw.update(m, step=2, gradients=np.eye(2))  # off the interval: ignored
    np.testing.assert_allclose(gw.weights(), [0.25, 0.75])
    gw.update(m, step=3, gram=np.array([[1.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(gw.weights(), mirror_descent_step([0.25, 0.75], gram=np.diag([1.0, 0.0])))
    assert gw.metrics()["gradient/updates"] == 1.0


def test_gradient_strategy_averages_influence_over_the_interval() -> None:
    """The authors' weight accumulation: gradients every step, the influences averaged, one move per interval."""
    grams = [
        np.array([[4.0, 1.0], [1.0, 1.0]]),
        np.array([[1.0, -1.0], [-1.0, 9.0]]),
        np.array([[2.0, 0.0], [0.0, 2.0]]),
    ]
    gw = GradientWeighting([1.0, 1.0], eta=0.2, update_interval=3, clip_norm=None)
    assert all(gw.wants_gradients(step) for step in range(6))
    for step, gram in enumerate(grams):
        gw.update(batch(0.0, 0.0), step=step, gram=gram)
        if step < 2:
            np.testing.assert_array_equal(gw.weights(), [0.5, 0.5])  # accumulating
    mean_influence = np.mean([g.sum(axis=1) for g in grams], axis=0)  # [(5 + 0 + 2) / 3, (2 + 8 + 2) / 3]
    e = np.exp(0.2 * mean_influence)
    np.testing.assert_allclose(gw.weights(), e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(gw.metrics()["gradient/influence/1"], mean_influence[1], rtol=1e-12)
    saved = json.loads(json.dumps(gw.state_dict()))
    gw.update(batch(0.0, 0.0), step=3, gram=grams[0])  # accumulation restarts and survives a resume
    resumed = GradientWeighting([1.0, 1.0], eta=0.2, update_interval=3, clip_norm=None)
    resumed.load_state_dict(saved)
    resumed.update(batch(0.0, 0.0), step=3, gram=grams[0])
    assert resumed.state_dict() == gw.state_dict()


def test_gradient_step_size_follows_the_learning_rate() -> None:
    """eta_t = lr_t / lambda (Lu et al.): with eta_schedule lr, eta at the peak lr and proportionally less after."""
    assert step_size(0.1, "lr", None, 0.5e-6, 1e-6) == pytest.approx(0.05)
    assert step_size(0.1, "constant", None, 0.5e-6, 1e-6) == 0.1
    assert step_size(0.1, "lr", None, None, None) == 0.1  # no learning rate known: eta
    assert step_size(0.1, "lr", 1e-5, 1e-6, 2e-6) == pytest.approx(0.1)  # the authors' lr 1e-6 / lambda 1e-5
    with pytest.raises(ValueError, match="learning rate"):
        step_size(0.1, "lr", 1e-5, None, None)
    gram = np.array([[1.0, 0.0], [0.0, 0.0]])
    gw = GradientWeighting([1.0, 1.0], eta=0.4, clip_norm=None)
    gw.update(batch(0.0, 0.0), step=0, gram=gram, learning_rate=1e-3, peak_learning_rate=2e-3)
    np.testing.assert_allclose(gw.weights(), mirror_descent_step([0.5, 0.5], gram=gram, eta=0.2), rtol=1e-12)
    assert gw.metrics()["gradient/eta"] == pytest.approx(0.2)
    by_lambda = GradientWeighting([1.0, 1.0], regularization=1e-2, clip_norm=None)
    by_lambda.update(batch(0.0, 0.0), step=0, gram=gram, learning_rate=1e-3, peak_learning_rate=2e-3)
    assert by_lambda.metrics()["gradient/eta"] == pytest.approx(0.1)


def test_clipping_by_the_whole_model_norm_then_the_band() -> None:
    """The authors clip each objective's whole-model gradient, then keep a band of layers: the band's Gram matrix
    is scaled by min(1, c / |g_whole|), not by the band's own norm."""
    band = np.array([[0.6, 0.8], [0.3, 0.0]])  # band parts of two gradients; their whole-model norms: 5 and 0.5
    gram = band @ band.T
    whole = np.array([5.0, 0.5])
    c = np.array([0.2, 1.0])
    np.testing.assert_allclose(clip_gram(gram, 1.0, whole), gram * np.outer(c, c), rtol=1e-12)
    np.testing.assert_allclose(clip_gram(gram, 1.0), gram, rtol=1e-12)  # band norms 1 and 0.3: no clip
    gw = GradientWeighting([1.0, 1.0], eta=1.0)
    gw.update(batch(0.0, 0.0), step=0, gradients=band, grad_norms=whole)
    clipped = gram * np.outer(c, c)
    np.testing.assert_allclose(gw.weights(), mirror_descent_step([0.5, 0.5], gram=clipped, eta=1.0), rtol=1e-12)
    np.testing.assert_allclose(gw.metrics()["gradient/cosine/0/1"], 0.6, rtol=1e-12)


def test_layer_band_selects_decoder_layers() -> None:
    assert layer_index("base_model.model.model.layers.12.self_attn.q_proj.lora_A.default.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None and layer_index("lm_head.weight") is None
    assert in_layer_band("model.layers.10.mlp.up_proj.weight", (10, 25))
    assert not in_layer_band("model.layers.9.mlp.up_proj.weight", (10, 25))
    assert not in_layer_band("model.norm.weight", (10, 25)) and in_layer_band("model.norm.weight", None)
    assert GradientWeighting([1.0, 1.0], layer_band=[10, 25]).layer_band == (10, 25)


# --------------------------------------------------------------------------------------------------------------
# Lagrangian
# --------------------------------------------------------------------------------------------------------------


def test_squash() -> None:
    np.testing.assert_allclose(squash([0.0, 2.0], "inequality"), [0.5, 1 / (1 + math.exp(-2.0))], rtol=1e-12)
    np.testing.assert_allclose(squash([0.0, -1.0], ["equality", "equality"]), [0.0, math.tanh(-1.0)], rtol=1e-12)


def test_multiplier_step_by_hand() -> None:
    # lower bound, J = 0 < theta = 1: grad = s'(0) * (J - theta) = 0.25 * -1; v = -0.25; lambda = 0 + 0.1 * 0.25
    lam, vel = multiplier_step([0.0], [0.0], [1.0], "lower", lr=0.1, momentum=0.1)
    np.testing.assert_allclose(lam, [0.025])
    np.testing.assert_allclose(vel, [-0.25])
    s = 1 / (1 + math.exp(-0.025))
    lam2, vel2 = multiplier_step(lam, [0.0], [1.0], "lower", lr=0.1, momentum=0.1, velocity=vel)
    v = 0.1 * -0.25 + s * (1 - s) * -1.0
    np.testing.assert_allclose(vel2, [v], rtol=1e-12)
    np.testing.assert_allclose(lam2, [0.025 - 0.1 * v])
    # upper bound violated (J > theta) raises lambda; NaN J leaves it alone
    lam3, _ = multiplier_step([0.0, 0.0], [2.0, np.nan], [1.0, 1.0], "upper")
    assert lam3[0] > 0 and lam3[1] == 0
    # unsquashed: projection onto lambda >= 0; log (safe-rlhf): d/dlog = lambda * d * (J - theta)
    lam4, _ = multiplier_step([0.01], [5.0], [1.0], "lower", parametrization="identity")
    assert lam4[0] == 0.0
    lam5, _ = multiplier_step([0.0], [3.0], [1.0], "upper", lr=0.1, momentum=0.0, parametrization="log")
    np.testing.assert_allclose(lam5, [0.2])  # -(J - thr) * exp(0) -> log lambda += 0.1 * 2
    capped, _ = multiplier_step([0.0], [30.0], [1.0], "upper", parametrization="log", max_value=2.0)
    np.testing.assert_allclose(capped, [math.log(2.0)])


def test_multiplier_step_matches_torch_sgd() -> None:
    """Same numbers as the authors' torch.optim.SGD(momentum) on L = sum s(lambda) d (J - theta)."""
    torch = pytest.importorskip("torch")
    dirs = ["lower", "upper", "equal"]
    d = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    theta = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    param = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.1)
    ours, vel = np.array([0.1, -0.2, 0.05]), None
    rng = np.random.default_rng(5)
    for _ in range(6):
        j = rng.normal(size=3)
        s = torch.stack([torch.sigmoid(param[0]), torch.sigmoid(param[1]), torch.tanh(param[2])])
        loss = (s * d * (torch.tensor(j) - theta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours, vel = multiplier_step(ours, j, theta.numpy(), dirs, lr=0.1, momentum=0.1, velocity=vel)
    np.testing.assert_allclose(ours, param.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    ("direction", "violated", "met", "parametrization"),
    [
        ("lower", 0.0, 2.0, "squashed"),
        ("upper", 2.0, 0.0, "squashed"),
        ("lower", 0.0, 2.0, "identity"),
        ("upper", 2.0, 0.0, "log"),
        ("equal", 0.0, 2.0, "squashed"),
    ],
)
def test_multiplier_rises_while_violated_and_falls_once_met(
    direction: str, violated: float, met: float, parametrization: str
) -> None:
    theta, lam, vel = [1.0], np.array([0.2]), None
    history = []
    for t in range(20):
        j = [violated if t < 10 else met]
        lam, vel = multiplier_step(lam, j, theta, direction, velocity=vel, parametrization=parametrization)
        history.append(lam[0])
    rising, falling = np.diff(history[:10]), np.diff(history[9:])
    assert np.all(rising > 0), history
    assert np.all(falling <= 0) and falling.sum() < 0, history


def test_mixed_advantages_by_hand() -> None:
    a_base = np.array([1.0, -1.0])
    a_k = np.array([[2.0, 0.0], [0.0, 2.0]])
    s = np.array([0.25, 0.5])
    # (C - sum s) A_base + sum s_k A_k with C = 2 constraints: 1.25 * [1, -1] + [0.5, 1.0]
    np.testing.assert_allclose(mixed_advantages(a_base, a_k, s), [1.75, -0.25])
    np.testing.assert_allclose(mixed_advantages(a_base, a_k, s, signs=[1, -1]), [1.75, -2.25])
    np.testing.assert_allclose(unsquashed_advantages(a_base, a_k, [1.0, 2.0]), [3.0, 3.0])
    # safe-rlhf: (A_r - lambda A_c) / (1 + lambda)
    np.testing.assert_allclose(safe_rlhf_advantages(a_base, a_k[:, :1], [3.0], signs=[-1]), [(1 - 6) / 4, -1 / 4])


def test_lagrangian_combine_equals_mix_of_per_objective_advantages() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(12, 3))
    lw = LagrangianWeighting(3, [Constraint(1, 0.5, "lower"), Constraint(2, 0.0, "upper")], base=0, init=0.3)
    composer = RewardComposer([Objective(n, Column(n)) for n in "abc"], lw)
    comp = composer.compose(matrix, 4)
    a = objective_advantages(matrix, 4, "group")
    np.testing.assert_allclose(a[:, 1], group_advantages(matrix[:, 1], 4), rtol=1e-12)
    s = squash([0.3, 0.3])
    expected = mixed_advantages(a[:, 0], a[:, 1:], s, signs=[1, -1])
    np.testing.assert_allclose(comp.advantages, expected, rtol=1e-12)
    np.testing.assert_allclose(comp.weights, [2 - s.sum(), s[0], -s[1]], rtol=1e-12)
    assert comp.metrics["lagrange/multiplier/1"] == pytest.approx(s[0])
    # KL-only base (A_base = 0): only the constraint terms remain
    kl_only = LagrangianWeighting(3, [(1, 0.5)], base=None, init=0.0)
    np.testing.assert_allclose(kl_only.combine(matrix, 4, "group")[1], 0.5 * a[:, 1], rtol=1e-12)


def test_safe_rlhf_form_and_sum_of_rewards_variant() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(8, 2))
    a = objective_advantages(matrix, 4, "group")
    lw = LagrangianWeighting(2, [(1, 0.0, "upper")], base=0, form="safe_rlhf", init=2.0)
    np.testing.assert_allclose(lw.combine(matrix, 4, "group")[1], (a[:, 0] - 2.0 * a[:, 1]) / 3.0, rtol=1e-12)
    np.testing.assert_allclose(lw.weights(), [1 / 3, -2 / 3], rtol=1e-12)
    # maximise the sum of both rewards s.t. upper bounds on each
    both = LagrangianWeighting(2, [(0, 1.0, "upper"), (1, 1.0, "upper")], base=[0, 1], init=0.0)
    s = squash([0.0, 0.0])
    np.testing.assert_allclose(both.weights(), [2 - s.sum() - s[0], 2 - s.sum() - s[1]], rtol=1e-12)


def test_lagrangian_toy_loop() -> None:
    """J of the constrained reward follows its weight; the multiplier rises while J < theta and falls after."""
    lw = LagrangianWeighting(2, [(1, 1.0, "lower")], base=0, lr=1.0, momentum=0.1)
    j, multipliers, js = 0.0, [], []
    for _ in range(60):
        w = lw.weights()
        j += 0.2 * (w[1] - 0.5)  # the policy improves objective 1 when its weight beats one half
        lw.update(batch(0.0, j))
        multipliers.append(float(lw.multipliers()[0]))
        js.append(j)
    first_met = next(i for i, v in enumerate(js) if v >= 1.0)  # multipliers[i] is set from js[i]
    assert first_met > 5
    assert np.all(np.diff(multipliers[:first_met]) > 0)  # violated: rising
    assert multipliers[first_met] < multipliers[first_met - 1]  # met: falling


def test_lagrangian_defaults_follow_the_authors_code() -> None:
    """Moskovitz et al.'s code: lambda_0 ~ N(0, 0.01) (one draw, seeded), gradient clip 0.5, SGD momentum 0.1."""
    lw = LagrangianWeighting(3, [(1, 0.5), (2, 0.1)], base=0, seed=11)
    start = lw.state_dict()["param"]
    assert start[0] == start[1] == pytest.approx(np.random.default_rng(11).normal(0.0, 0.01))
    assert 0 < abs(start[0]) < 0.05 and lw.max_grad_norm == 0.5 and lw.momentum == 0.1
    assert LagrangianWeighting(3, [(1, 0.5)], seed=11).state_dict()["param"][0] == start[0]
    assert LagrangianWeighting(3, [(1, 0.5)], seed=12).state_dict()["param"][0] != start[0]
    assert LagrangianWeighting(2, [(1, 0.5)], form="unsquashed").max_grad_norm == 0.5
    assert LagrangianWeighting(2, [(1, 0.5, "upper")], form="safe_rlhf").max_grad_norm is None
    assert LagrangianWeighting(2, [(1, 0.5)], max_grad_norm=None).max_grad_norm is None
    # the clip binds: J - theta = -10 gives a raw gradient 0.25 * -10; clipped to norm 0.5 the step is 0.05
    clipped = LagrangianWeighting(2, [(1, 10.0)], init=0.0)
    clipped.update(batch(0.0, 0.0))
    np.testing.assert_allclose(clipped.state_dict()["param"], [0.05], rtol=1e-12)


def test_lagrangian_minibatch_cadence() -> None:
    """minibatches x epochs multiplier steps per update, each on one minibatch's J (the authors: one per PPO
    minibatch), in a seeded order that a resumed run repeats."""
    rng = np.random.default_rng(4)
    matrix = np.stack([rng.normal(size=16), rng.uniform(size=16)], axis=1)
    lw = LagrangianWeighting(2, [(1, 0.9)], base=0, init=0.0, minibatches=4, epochs=3, seed=5)
    lw.update(matrix)
    order_rng = np.random.default_rng([5, 0])
    expected, vel = np.array([0.0]), None
    for _ in range(3):
        for rows in np.array_split(order_rng.permutation(16), 4):
            expected, vel = multiplier_step(
                expected, [matrix[rows, 1].mean()], [0.9], lr=0.1, momentum=0.1, velocity=vel, max_grad_norm=0.5
            )
    np.testing.assert_allclose(lw.state_dict()["param"], expected, rtol=1e-12)
    one_step = LagrangianWeighting(2, [(1, 0.9)], base=0, init=0.0)
    one_step.update(matrix)
    assert lw.multipliers()[0] > one_step.multipliers()[0] > 0.5  # J < 0.9: both rise, twelve steps further
    fewer_rows = LagrangianWeighting(2, [(1, 0.9)], base=0, init=0.0, minibatches=40)
    fewer_rows.update(matrix[:3])  # more minibatches than rows: one row each
    assert fewer_rows.state_dict()["updates"] == 1


# --------------------------------------------------------------------------------------------------------------
# State round trips and the factory
# --------------------------------------------------------------------------------------------------------------


def _strategies() -> list:
    return [
        lambda: StaticWeights([1.0, 2.0, 3.0]),
        lambda: HypervolumeWeighting([1.0, 1.0, -1.0], buffer_size=3),
        lambda: HypervolumeWeighting([1.0, 1.0, 1.0], scales=[1, 2, 3], placement="rewards"),
        lambda: GradientWeighting([1.0, 1.0, 2.0]),
        lambda: LagrangianWeighting(3, [(1, 0.1, "lower"), (2, 0.0, "equal")], base=0),
        lambda: LagrangianWeighting(3, [(1, 0.1, "upper")], base=[0, 2], form="unsquashed", lambda_max=5.0),
        lambda: LagrangianWeighting(3, [(1, 0.1, "upper"), (2, 0.3, "lower")], form="safe_rlhf"),
    ]


@pytest.mark.parametrize("make", _strategies())
def test_state_round_trips_through_json_and_resumes_identically(make) -> None:
    rng = np.random.default_rng(7)
    matrices = [rng.normal(size=(8, 3)) + 0.1 * t for t in range(8)]
    grads = [rng.normal(size=(3, 5)) for _ in range(8)]
    run = make()
    for t in range(4):
        run.update(matrices[t], step=t, gradients=grads[t])
    saved = json.loads(json.dumps(run.state_dict(), allow_nan=False))
    resumed = make()
    resumed.load_state_dict(saved)
    for t in range(4, 8):
        run.update(matrices[t], step=t, gradients=grads[t])
        resumed.update(matrices[t], step=t, gradients=grads[t])
        np.testing.assert_array_equal(run.weights(), resumed.weights())
    assert run.state_dict() == resumed.state_dict()
    composer_a = RewardComposer([Objective(n, Column(n)) for n in "abc"], run)
    composer_b = RewardComposer([Objective(n, Column(n)) for n in "abc"], resumed)
    np.testing.assert_array_equal(
        composer_a.compose(matrices[0], 4).advantages, composer_b.compose(matrices[0], 4).advantages
    )


def test_factory_builds_every_strategy() -> None:
    names = ["acc", "len", "fmt"]
    assert isinstance(build_weighting("static", 3, names, weights=[1, 2, 3]), StaticWeights)
    hv = build_weighting("hypervolume", 3, names, weights=[1, -1, 1], placement="rewards", scales=[1, 10, 1])
    assert isinstance(hv, HypervolumeWeighting) and hv.placement == "rewards"
    gw = build_weighting("gradient", 3, names, eta=0.05, update_interval=4)
    assert isinstance(gw, GradientWeighting) and gw.update_interval == 4
    lw = build_weighting(
        "lagrangian",
        3,
        names,
        base="acc",
        constraints=[
            {"objective": "len", "threshold": 0.5, "direction": "upper"},
            {"objective": "fmt", "threshold": 1},
        ],
        lr=0.2,
    )
    assert isinstance(lw, LagrangianWeighting)
    assert [(c.objective, c.direction) for c in lw.constraints] == [(1, "upper"), (2, "lower")]
    assert "lagrange/multiplier/len" in lw.metrics()


@pytest.mark.parametrize(
    ("name", "k", "options", "message"),
    [
        ("gradient", 1, {}, "gradient weighting needs at least two objectives"),
        ("hypervolume", 2, {"placement": "loss"}, "weighting.placement: 'loss' is not allowed"),
        (
            "lagrangian",
            2,
            {"constraints": [{"objective": "zzz", "threshold": 1}]},
            r"constraints\[0\].objective: 'zzz'",
        ),
        ("lagrangian", 2, {"constraints": [{"objective": "b", "threshold": 1}], "lr": -0.1}, "weighting.lr: must be"),
        ("lagrangian", 2, {"constraints": []}, "weighting.constraints: .* non-empty"),
        ("lagrangian", 2, {"constraints": [{"objective": "b", "threshold": 1}], "base": "q"}, "weighting.base: 'q'"),
        (
            "lagrangian",
            2,
            {"constraints": [{"objective": "b", "threshold": 1, "direction": "equal"}], "form": "safe_rlhf"},
            "cannot express an equality",
        ),
        ("lagrangian", 2, {"constraints": [{"objective": "b", "threshold": 1}], "form": "ppo"}, "weighting.form"),
        ("hypervolume", 2, {"scales": [1, 0]}, "weighting.scales: must all be > 0"),
        ("hypervolume", 2, {"buffer_size": 0}, "weighting.buffer_size"),
        ("gradient", 2, {"eta": 0}, "weighting.eta"),
        ("gradient", 2, {"weights": [1, -1]}, "weighting.weights: gradient weighting needs positive"),
        ("static", 2, {"eta": 0.1}, r"unknown option\(s\) \['eta'\]"),
        ("hypervolume", 2, {"eval_every": 2}, "weighting.eval_every: applies to source: eval"),
        ("hypervolume", 2, {"source": "eval", "eval_every": 0}, "weighting.eval_every: must be an integer"),
        ("gradient", 2, {"eta": 0.1, "regularization": 1e-5}, "weighting.regularization: give eta or"),
        ("gradient", 2, {"layer_band": [3, 1]}, r"weighting.layer_band: must be \[first, last\]"),
        ("gradient", 2, {"eta_schedule": "cosine"}, "weighting.eta_schedule: 'cosine'"),
        ("lagrangian", 2, {"constraints": [{"objective": "b", "threshold": 1}], "minibatches": 0}, "minibatches"),
        ("lagrangian", 2, {"constraints": [{"objective": "b", "threshold": 1}], "seed": 1.5}, "weighting.seed"),
        ("static", 2, {"weights": [1]}, "needs 2 entries"),
        ("dynamic", 2, {}, "weighting.strategy: 'dynamic' is not known"),
        (
            "lagrangian",
            2,
            {"constraints": [{"objective": "b", "threshold": 1}], "weights": [2, 1]},
            "weights are its multipliers",
        ),
    ],
)
def test_factory_errors_name_the_option(name: str, k: int, options: dict, message: str) -> None:
    with pytest.raises(RewardConfigError, match=message):
        build_weighting(name, k, ["a", "b"][:k], **options)


def test_composer_state_with_dynamic_strategy_and_mismatch() -> None:
    composer = _composer(HypervolumeWeighting([1.0, 1.0]))
    composer.update(batch(0.0, 0.0))
    state = json.loads(json.dumps(composer.state_dict()))
    other = _composer(HypervolumeWeighting([1.0, 1.0]))
    other.load_state_dict(state)
    assert other.state_dict() == composer.state_dict()
    with pytest.raises(RewardConfigError, match="'hypervolume' weighting"):
        _composer(StaticWeights([1.0, 1.0])).load_state_dict(state)
    assert composer.wants_gradients(0) is False
    assert _composer(GradientWeighting([1.0, 1.0])).wants_gradients(0) is True


# -- held-out pass (hypervolume source: eval) ------------------------------------------------------------------


def test_held_out_share_splits_prompts_over_processes_and_repeats_samples() -> None:
    from alignment.learners.heldout import HeldOutSet
    from rollout.base import SamplingParams

    held = HeldOutSet(
        prompts=["p0", "p1", "p2"], columns={"ref": ["r0", "r1", "r2"]}, params=SamplingParams(n=2, max_tokens=4)
    )
    assert held.share(0, 2) == (["p0", "p0", "p2", "p2"], {"ref": ["r0", "r0", "r2", "r2"]})
    assert held.share(1, 2) == (["p1", "p1"], {"ref": ["r1", "r1"]})
    assert held.share(3, 4) == ([], {"ref": []})  # more processes than prompts: an empty share


def test_held_out_point_is_the_per_objective_mean_over_every_process_rows() -> None:
    from alignment.learners.heldout import point_from_sums, score_sums
    from rewards.rules import LengthReward
    from rollout.base import Sample

    composer = RewardComposer(
        [
            Objective("words", LengthReward(unit="words", mode="count")),
            Objective("chars", LengthReward(unit="chars", mode="count")),
        ],
        StaticWeights([1.0, 1.0]),
    )

    def sample(text: str) -> Sample:
        return Sample(
            text=text, prompt_ids=[1], completion_ids=[2] * len(text.split()), logprobs=[], finish_reason="stop"
        )

    # two processes' shares, scored separately and summed as the learner does across processes
    first = score_sums(composer, ["q", "q"], [sample("a b"), sample("a b c d")], {})
    second = score_sums(composer, ["q"], [sample("abc")], {})
    empty = score_sums(composer, [], [], {})
    point = point_from_sums(first + second + empty)
    np.testing.assert_allclose(point, [(2 + 4 + 1) / 3, (3 + 7 + 3) / 3])
    assert math.isnan(point_from_sums(np.zeros((2, 2)))[0]), "no rows: NaN, which the strategy skips"


def test_recipe_refuses_hypervolume_source_eval_without_held_out_prompts(tmp_path) -> None:
    from alignment.errors import ConfigError
    from alignment.recipes.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "algorithm: grpo\nmodel: {path: builtin:tiny-policy}\ndata: {train: builtin:quickstart_prompts.jsonl}\n"
        "rewards:\n  weighting: {strategy: hypervolume, options: {source: eval}}\n"
        "  objectives: [{name: words, component: length, args: {unit: words, mode: count}}]\n"
    )
    with pytest.raises(ConfigError, match="rewards.weighting.options.source"):
        load_recipe(recipe)
    loaded = load_recipe(recipe, ["data.eval=builtin:quickstart_eval_prompts.jsonl"])
    assert loaded.rewards.weighting.wants_heldout()
