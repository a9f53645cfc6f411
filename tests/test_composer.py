"""Composer: scoring with failures, composite rewards, and advantages checked by hand and against TRL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rewards.composer import Objective, RewardComposer
from rewards.errors import RewardComponentError, RewardConfigError
from rewards.normalization import decoupled_advantages, group_advantages, nanstd, weighted_sum
from rewards.rules import LengthReward, band_length_score, target_length_score
from rewards.weighting import StaticWeights

# TRL's nanstd computes Bessel's factor count/(count-1) from integer tensors, i.e. in float32: agreement is to ~1e-8.
TRL_RTOL = 1e-6


class Constant:
    def __init__(self, name: str, values: list[float | None]) -> None:
        self.name, self.values = name, values

    def __call__(self, prompts, completions, **columns):
        return self.values[: len(completions)] if len(completions) > 1 else [self.values[0]]


class FailsOnOdd:
    name = "flaky"

    def __call__(self, prompts, completions, **columns):
        out = []
        for c in completions:
            if int(c) % 2:
                raise ValueError("odd")
            out.append(float(c))
        return out


def test_nanstd_matches_trl() -> None:
    from trl.trainer.utils import nanstd as trl_nanstd

    x = np.array([[1.0, 2.0, np.nan, 4.0], [3.0, 3.0, 3.0, 1.0]])
    ours = nanstd(x, axis=1)
    theirs = trl_nanstd(torch.tensor(x), dim=1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=TRL_RTOL)


def test_group_advantages_by_hand() -> None:
    rewards = np.array([1.0, 3.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=2)
    # group 1: mean 2, std (Bessel) sqrt(2); group 2: std 0 -> advantages 0
    expected = np.array([-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4), 0.0, 0.0])
    np.testing.assert_allclose(adv, expected, rtol=1e-12)
    np.testing.assert_allclose(group_advantages(rewards, 2, scale="none"), [-1, 1, 0, 0])


def _trl_sum_then_normalize(matrix: np.ndarray, weights: np.ndarray, g: int) -> np.ndarray:
    """TRL 1.16 GRPOTrainer's sum_then_normalize / scale_rewards='group', restated on tensors."""
    from trl.trainer.utils import nanstd as trl_nanstd

    r = torch.tensor(matrix)
    rewards = (r * torch.tensor(weights).unsqueeze(0)).nansum(dim=1)
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g)
    std = trl_nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g)
    return ((rewards - mean) / (std + 1e-4)).numpy()


def test_group_normalisation_matches_trl_formula() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(16, 3))
    weights = np.array([1.0, 0.5, -0.2])
    ours = group_advantages(weighted_sum(matrix, weights), 4)
    np.testing.assert_allclose(ours, _trl_sum_then_normalize(matrix, weights, 4), rtol=TRL_RTOL)


def test_decoupled_matches_trl_normalize_then_sum() -> None:
    from trl.trainer.utils import nanstd as trl_nanstd

    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(12, 2))
    weights = np.array([0.7, 0.3])
    r = torch.tensor(matrix).view(-1, 4, 2)
    reward_k = ((r - r.mean(dim=1, keepdim=True)) / (trl_nanstd(r, dim=1, keepdim=True) + 1e-4)).view(-1, 2)
    combined = (reward_k * torch.tensor(weights)).nansum(dim=1)
    expected = (combined - combined.mean()) / (trl_nanstd(combined) + 1e-4)
    np.testing.assert_allclose(decoupled_advantages(matrix, weights, 4), expected.numpy(), rtol=TRL_RTOL)


def test_weighted_sum_skips_nan_and_keeps_all_nan_rows_nan() -> None:
    matrix = np.array([[1.0, np.nan], [np.nan, np.nan], [2.0, 4.0]])
    out = weighted_sum(matrix, np.array([1.0, 0.5]))
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 4.0


def test_composer_scores_and_counts_failures() -> None:
    composer = RewardComposer(
        [Objective("a", Constant("a", [1.0, float("nan"), None, 2.0])), Objective("flaky", FailsOnOdd())],
        StaticWeights([1.0, 1.0]),
    )
    result = composer.score(["p"] * 4, ["0", "1", "2", "3"])
    assert result.failures == {"a": 1, "flaky": 2}
    np.testing.assert_array_equal(np.isnan(result.matrix[:, 0]), [False, True, True, False])
    np.testing.assert_array_equal(result.matrix[:, 1], [0.0, np.nan, 2.0, np.nan])


def test_component_failing_everywhere_stops_with_its_name() -> None:
    composer = RewardComposer([Objective("flaky", FailsOnOdd())], StaticWeights([1.0]))
    with pytest.raises(RewardComponentError, match="'flaky' failed on all 2 rows: ValueError: odd"):
        composer.score(["p", "p"], ["1", "3"])


def test_composer_rejects_mismatched_weights() -> None:
    with pytest.raises(RewardConfigError, match="2 objectives .* but 1 weights"):
        RewardComposer([Objective("a", Constant("a", [1])), Objective("b", Constant("b", [1]))], StaticWeights([1.0]))


def test_compose_and_state_round_trip() -> None:
    composer = RewardComposer.static([LengthReward(target=2)], [2.0])
    matrix = composer.score(["p"] * 4, ["a b", "a", "a b c d", "a b"]).matrix
    composition = composer.compose(matrix, group_size=2)
    np.testing.assert_allclose(composition.rewards, [2.0, 1.0, 0.0, 2.0])
    assert composition.advantages[0] > 0 > composition.advantages[1]
    state = composer.state_dict()
    composer.load_state_dict(state)
    with pytest.raises(RewardConfigError):
        composer.load_state_dict({**state, "objectives": ["other"]})


def test_length_rules() -> None:
    assert target_length_score(30, 30) == 1.0
    assert target_length_score(15, 30) == 0.5
    assert target_length_score(90, 30) == 0.0
    assert band_length_score(5, 10, 20) == 0.5
    assert band_length_score(15, 10, 20) == 1.0
    assert band_length_score(30, 10, 20) == 0.5
    tokens = LengthReward(unit="tokens", mode="count")
    assert tokens(["p"], ["ignored"], completion_ids=[[1, 2, 3]]) == [3.0]
    assert LengthReward(unit="chars", mode="count")(["p"], [[{"role": "assistant", "content": "abcd"}]]) == [4.0]
    with pytest.raises(RewardConfigError, match="lower <= upper"):
        LengthReward(mode="band", band=[20, 10])
    with pytest.raises(RewardConfigError, match="target > 0"):
        LengthReward(mode="target")


class Returns:
    def __init__(self, name: str, values) -> None:
        self.name, self.values = name, values

    def __call__(self, prompts, completions, **columns):
        return self.values


def test_score_conversion_counts_nan_and_inf_but_not_none() -> None:
    composer = RewardComposer(
        [
            Objective("array", Returns("array", np.array([1.0, np.inf, np.nan]))),
            Objective("mixed", Returns("mixed", ["1.5", None, True])),
        ],
        StaticWeights([1.0, 1.0]),
    )
    result = composer.score(["p"] * 3, ["a", "b", "c"])
    assert result.failures == {"array": 2, "mixed": 0}
    np.testing.assert_array_equal(result.matrix[:, 0], [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(result.matrix[:, 1], [1.5, np.nan, 1.0])


class HookedWeights(StaticWeights):
    """Static weights with every optional hook: scales and metrics; `combine` declines (returns None)."""

    def reward_scale(self) -> float:
        return 3.0

    def advantage_scale(self) -> float:
        return 0.5

    def combine(self, matrix, group_size, normalization):
        return None

    def metrics(self) -> dict[str, float]:
        return {"custom": 1.0}


def test_compose_applies_optional_hooks() -> None:
    matrix = np.array([[1.0, 0.0], [3.0, 1.0], [0.0, 2.0], [5.0, 2.0]])
    plain = RewardComposer.static([Returns("a", []), Returns("b", [])], [1.0, 2.0], normalization="none")
    hooked = RewardComposer(
        [Objective("a", Returns("a", [])), Objective("b", Returns("b", []))], HookedWeights([1, 2]), "none"
    )
    expected, got = plain.compose(matrix, 2), hooked.compose(matrix, 2)
    np.testing.assert_allclose(got.rewards, 3.0 * expected.rewards)
    np.testing.assert_allclose(got.advantages, 1.5 * expected.advantages)  # centring only: 3 * 0.5
    assert got.metrics == {"custom": 1.0, "reward_scale": 3.0, "advantage_scale": 0.5}
    assert plain.compose(matrix, 2).metrics == {}
    np.testing.assert_allclose(plain.objective_advantages(matrix, 2), [[-1, -0.5], [1, 0.5], [-2.5, 0], [2.5, 0]])


def test_score_objective_matches_the_matrix_column_with_masks() -> None:
    from rewards.masking import LengthCondition

    composer = RewardComposer(
        [Objective("a", Constant("a", [1.0, float("nan"), None, 2.0])), Objective("flaky", FailsOnOdd())],
        StaticWeights([1.0, 1.0]),
        masks={"flaky": LengthCondition(unit="chars", target=1, tau_l=1.0, tau_u=1.0)},
    )
    completions = ["0", "1", "22", "3"]
    matrix = composer.score(["p"] * 4, completions).matrix
    for k in range(2):
        np.testing.assert_array_equal(composer.score_objective(k, ["p"] * 4, completions), matrix[:, k])
    assert matrix[2, 1] == 0.0, "'22' is outside the one-character band"


# -- overflow: any finite input is safe ----------------------------------------------------------------------------


def test_normalisation_is_scale_free_up_to_the_largest_float() -> None:
    """z(x * s; eps) = z(x; eps / s): the z-scores of x * 2**k equal those of x with eps scaled alike, for k up
    to the float64 limit (the functions rescale by a power of two where squares would overflow), so huge but
    finite inputs never turn into inf/NaN or all-zero advantages."""
    from rewards.normalization import EPS, objective_advantages

    rng = np.random.default_rng(7)
    rewards = rng.normal(size=24)
    matrix = rng.normal(size=(24, 3))
    weights = np.array([0.5, 1.0, 2.0])
    close = {"rtol": 1e-12, "atol": 1e-12}
    for k in (0, 300, 600, 1000):
        s, eps = 2.0**k, EPS / 2.0**k
        for mode in ("group", "batch"):
            np.testing.assert_allclose(group_advantages(rewards * s, 4, mode), group_advantages(rewards, 4, mode, eps),
                                       **close)  # fmt: skip
            np.testing.assert_allclose(objective_advantages(matrix * s, 4, mode),
                                       objective_advantages(matrix, 4, mode, eps), **close)  # fmt: skip
        np.testing.assert_allclose(group_advantages(rewards * s, 4, "none") / s, group_advantages(rewards, 4, "none"),
                                   **close)  # fmt: skip
        # Decoupled: per-objective z-scores scale-free as above; the final batch z-score sees O(1) values.
        np.testing.assert_allclose(decoupled_advantages(matrix * s, weights, 4),
                                   _decoupled_with_group_eps(matrix, weights, 4, eps), **close)  # fmt: skip


def _decoupled_with_group_eps(matrix: np.ndarray, weights: np.ndarray, g: int, eps: float) -> np.ndarray:
    """GDPO restated with `eps` in the per-objective group z-scores and the default eps in the batch z-score."""
    from rewards.normalization import EPS

    grouped = matrix.reshape(-1, g, matrix.shape[1])
    z = (grouped - grouped.mean(axis=1, keepdims=True)) / (grouped.std(axis=1, ddof=1, keepdims=True) + eps)
    combined = (z.reshape(matrix.shape) * weights).sum(axis=1)
    return (combined - combined.mean()) / (combined.std(ddof=1) + EPS)


def test_one_huge_group_or_objective_leaves_the_others_untouched() -> None:
    """+-1e308 in one group (or one objective) changes nothing in the others (group and decoupled scaling)."""
    rewards = np.array([1e308, -1e308, 5.0, 1.0, 0.0, 3.0, 2.0, 2.5])
    alone = group_advantages(rewards[2:], 2)
    got = group_advantages(rewards, 2)
    np.testing.assert_allclose(got[2:], alone, rtol=1e-12)
    assert got[0] > 0 > got[1] and np.isfinite(got).all()
    matrix = np.array([[1e308, 0.1], [-1e308, 0.9], [1.0, 0.5], [1.0, 0.7]])
    decoupled = decoupled_advantages(matrix, np.array([0.0, 1.0]), 2)
    np.testing.assert_allclose(decoupled, decoupled_advantages(matrix[:, 1:], np.array([1.0]), 2), rtol=1e-12)


def test_inf_entries_are_not_applicable_and_overflowing_sums_are_nan_for_that_row_only() -> None:
    matrix = np.array([[np.inf, 1.0], [2.0, 3.0], [1e300, 1e300], [1.0, 0.0]])
    out = weighted_sum(matrix, np.array([1e10, 1e10]))
    assert out[0] == 1e10 and out[1] == 5e10 and math.isnan(out[2]) and out[3] == 1e10
    adv = group_advantages(out, 2)
    assert adv[2] == 0.0 and np.isfinite(adv).all() and adv[3] == 0.0  # row 3 is alone in its group now
    assert adv[0] < 0 < adv[1]
    composer = RewardComposer.static([Returns("a", []), Returns("b", [])], [1.0, 1.0])
    composition = composer.compose(np.array([[np.inf, 1.0], [-np.inf, 0.0], [np.nan, 2.0], [1.0, 2.0]]), 2)
    np.testing.assert_allclose(composition.rewards, [1.0, 0.0, 2.0, 3.0])
    assert np.isfinite(composition.advantages).all() and composition.advantages[0] > 0 > composition.advantages[1]
