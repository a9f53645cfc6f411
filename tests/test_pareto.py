"""Tests for rewards.pareto (on moocore) and its oracle, tests/pareto_oracle.py (the former home-made code):
hand-computed cases and brute-force property tests run against both; then the two are cross-checked to 1e-9 on
random fronts, K = 2..5, including a large set."""

from __future__ import annotations

import itertools

import numpy as np
import pareto_oracle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rewards.pareto
from rewards.pareto import hypervolume, hypervolume_contributions, hypervolume_improvement, non_dominated

RTOL = 1e-9


@pytest.fixture(scope="module", params=[rewards.pareto, pareto_oracle], ids=["moocore", "oracle"])
def impl(request):
    """The implementation under test: rewards.pareto (moocore) or the oracle."""
    return request.param


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------------------------


def brute_non_dominated(points: np.ndarray) -> np.ndarray:
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i != j and np.all(points[j] >= points[i]) and np.any(points[j] > points[i]):
                mask[i] = False
                break
    return mask


def hv_inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    """Sum over non-empty subsets of (-1)^(|S|+1) * vol(intersection of the boxes [ref, p], p in S)."""
    total = 0.0
    n = len(points)
    for size in range(1, n + 1):
        sign = 1.0 if size % 2 else -1.0
        for subset in itertools.combinations(range(n), size):
            corner = points[list(subset)].min(axis=0)
            total += sign * float(np.prod(np.maximum(corner - ref, 0.0)))
    return total


def hv_grid(points: np.ndarray, ref: np.ndarray) -> float:
    """Union-of-boxes volume by coordinate compression: a cell counts when some point dominates its upper corner."""
    k = len(ref)
    above = points[np.all(points > ref, axis=1)]
    if len(above) == 0:
        return 0.0
    axes = [np.unique(np.concatenate([[ref[j]], above[:, j]])) for j in range(k)]
    uppers = np.meshgrid(*[a[1:] for a in axes], indexing="ij")
    widths = np.meshgrid(*[np.diff(a) for a in axes], indexing="ij")
    corners = np.stack([u.ravel() for u in uppers], axis=1)
    cell_volume = np.prod(np.stack([w.ravel() for w in widths], axis=1), axis=1)
    covered = np.zeros(len(corners), dtype=bool)
    for p in above:
        covered |= np.all(corners <= p, axis=1)
    return float(cell_volume[covered].sum())


def close(a: float, b: float, scale: float | None = None) -> bool:
    scale = max(abs(b), 1.0) if scale is None else max(scale, 1.0)
    return abs(a - b) <= RTOL * scale


# --------------------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------------------


@st.composite
def integer_sets(draw, max_n: int = 8, ks=(2, 3, 4, 5), low: int = -1, high: int = 5):
    """(points [n, K] on a small integer grid, so ties and duplicates are frequent, ref [K])."""
    k = draw(st.sampled_from(ks))
    n = draw(st.integers(0, max_n))
    flat = draw(st.lists(st.integers(low, high), min_size=n * k, max_size=n * k))
    ref = draw(st.lists(st.integers(-1, 1), min_size=k, max_size=k))
    return np.array(flat, dtype=float).reshape(n, k), np.array(ref, dtype=float)


@st.composite
def float_sets(draw, max_n: int = 8, ks=(2, 3, 4, 5)):
    """(points [n, K] with arbitrary floats in [-0.2, 1], ref [K] = 0)."""
    k = draw(st.sampled_from(ks))
    n = draw(st.integers(0, max_n))
    elems = st.floats(-0.2, 1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    flat = draw(st.lists(elems, min_size=n * k, max_size=n * k))
    return np.array(flat, dtype=float).reshape(n, k), np.zeros(k)


# --------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------------------------


def test_staircase_2d(impl):
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    ref = np.zeros(2)
    assert impl.hypervolume(pts, ref) == pytest.approx(6.0)
    np.testing.assert_allclose(impl.hypervolume_contributions(pts, ref), [1.0, 1.0, 1.0])
    assert impl.non_dominated(pts).all()
    # A dominated point adds nothing and is flagged.
    with_dominated = np.vstack([pts, [[1.5, 1.5]]])
    assert impl.hypervolume(with_dominated, ref) == pytest.approx(6.0)
    np.testing.assert_array_equal(impl.non_dominated(with_dominated), [True, True, True, False])
    # ... but removing (2, 2) now only loses what (1.5, 1.5) does not cover: 1 - 0.5 * 0.5.
    np.testing.assert_allclose(impl.hypervolume_contributions(with_dominated, ref), [1.0, 0.75, 1.0, 0.0])


def test_staircase_2d_shifted_ref(impl):
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # ref (0.5, 0.5): strips 0.5*2.5 + 1*1.5 + 1*0.5
    assert impl.hypervolume(pts, np.array([0.5, 0.5])) == pytest.approx(0.5 * 2.5 + 1.5 + 0.5)


def test_boxes_3d(impl):
    ref = np.zeros(3)
    assert impl.hypervolume(np.array([[1.0, 2.0, 3.0]]), ref) == pytest.approx(6.0)
    two = np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0]])
    assert impl.hypervolume(two, ref) == pytest.approx(3.0)
    three = np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    assert impl.hypervolume(three, ref) == pytest.approx(4.0)
    np.testing.assert_allclose(impl.hypervolume_contributions(three, ref), [1.0, 1.0, 1.0])
    assert impl.hypervolume_improvement(two, np.array([1.0, 1.0, 2.0]), ref) == pytest.approx(1.0)


def test_boxes_4d_and_5d(impl):
    two = np.array([[2.0, 1.0, 1.0, 1.0], [1.0, 2.0, 1.0, 1.0]])
    assert impl.hypervolume(two, np.zeros(4)) == pytest.approx(3.0)
    eye = np.ones((5, 5)) + np.eye(5)  # five boxes of volume 2 overlapping pairwise in the unit cube
    assert impl.hypervolume(eye, np.zeros(5)) == pytest.approx(6.0)
    np.testing.assert_allclose(impl.hypervolume_contributions(eye, np.zeros(5)), np.ones(5))


def test_one_objective(impl):
    pts = np.array([[3.0], [1.0], [3.0], [2.0]])
    np.testing.assert_array_equal(impl.non_dominated(pts), [True, False, True, False])
    assert impl.hypervolume(pts, np.array([0.5])) == pytest.approx(2.5)
    np.testing.assert_allclose(impl.hypervolume_contributions(pts, np.array([0.5])), np.zeros(4))
    np.testing.assert_allclose(impl.hypervolume_contributions(pts[1:], np.array([0.5])), [0.0, 1.0, 0.0])
    assert impl.hypervolume_improvement(pts[1:2], np.array([4.0]), np.array([0.0])) == pytest.approx(3.0)


def test_points_at_or_below_ref(impl):
    ref = np.zeros(2)
    assert impl.hypervolume(np.array([[0.0, 5.0], [5.0, 0.0], [-1.0, -1.0]]), ref) == 0.0
    pts = np.array([[1.0, 1.0], [0.5, -1.0], [3.0, 0.0]])
    assert impl.hypervolume(pts, ref) == pytest.approx(1.0)
    np.testing.assert_allclose(impl.hypervolume_contributions(pts, ref), [1.0, 0.0, 0.0])
    # The boundary point still dominates nothing and is dominated by nothing.
    np.testing.assert_array_equal(impl.non_dominated(pts), [True, False, True])
    assert impl.hypervolume_improvement(pts, np.array([5.0, 0.0]), ref) == 0.0
    assert impl.hypervolume(np.array([[1.0, 1.0, 0.0]]), np.zeros(3)) == 0.0


def test_duplicates(impl):
    pts = np.array([[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(impl.non_dominated(pts), [True, True])
    assert impl.hypervolume(pts, np.zeros(2)) == pytest.approx(1.0)
    np.testing.assert_array_equal(impl.hypervolume_contributions(pts, np.zeros(2)), [0.0, 0.0])
    assert impl.hypervolume_improvement(pts[:1], pts[0], np.zeros(2)) == 0.0
    pts3 = np.array([[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(impl.non_dominated(pts3), [True, True, True])
    np.testing.assert_allclose(impl.hypervolume_contributions(pts3, np.zeros(3)), [0.0, 1.0, 0.0])
    # -0.0 and 0.0 are the same value: neither dominates the other.
    np.testing.assert_array_equal(impl.non_dominated(np.array([[0.0, 1.0], [-0.0, 1.0]])), [True, True])


def test_empty_set(impl):
    for k in (1, 2, 3, 4):
        empty = np.zeros((0, k))
        ref = np.zeros(k)
        assert impl.non_dominated(empty).shape == (0,)
        assert impl.non_dominated(empty).dtype == bool
        assert impl.hypervolume(empty, ref) == 0.0
        assert impl.hypervolume_contributions(empty, ref).shape == (0,)
        assert impl.hypervolume_improvement(empty, np.full(k, 2.0), ref) == pytest.approx(2.0**k)


def test_accepts_lists_and_returns_python_float(impl):
    value = impl.hypervolume([[1, 2], [2, 1]], [0, 0])
    assert isinstance(value, float)
    assert value == pytest.approx(3.0)
    assert isinstance(impl.hypervolume_improvement([[1, 1]], [2, 2], [0, 0]), float)


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "ref", "match"),
    [
        (np.zeros((3, 2)), np.zeros(3), "shape mismatch: points has K=2 objectives but ref has 3"),
        (np.zeros(3), np.zeros(3), "points must be a 2-D array"),
        (np.zeros((3, 2)), np.zeros((1, 2)), "ref must be a 1-D array"),
        (np.zeros((3, 0)), np.zeros(0), "at least one objective"),
        (np.array([[1.0, np.nan]]), np.zeros(2), "points contains NaN"),
        (np.array([[1.0, np.inf]]), np.zeros(2), "points contains infinite"),
        (np.ones((2, 2)), np.array([0.0, -np.inf]), "ref contains infinite"),
        (np.ones((2, 2)), np.array([np.nan, 0.0]), "ref contains NaN"),
        ([["a", "b"]], np.zeros(2), "points must be numeric"),
    ],
)
def test_hypervolume_validation(impl, points, ref, match):
    with pytest.raises(ValueError, match=match):
        impl.hypervolume(points, ref)
    with pytest.raises(ValueError, match=match):
        impl.hypervolume_contributions(points, ref)


def test_non_dominated_validation(impl):
    with pytest.raises(ValueError, match="points must be a 2-D array"):
        impl.non_dominated(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="points contains NaN"):
        impl.non_dominated(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="points contains infinite"):
        impl.non_dominated(np.array([[0.0], [-np.inf]]))


def test_improvement_validation(impl):
    buf = np.ones((2, 3))
    with pytest.raises(ValueError, match="buffer has K=3 objectives but candidate has 2"):
        impl.hypervolume_improvement(buf, np.ones(2), np.zeros(3))
    with pytest.raises(ValueError, match="buffer has K=3 objectives but ref has 2"):
        impl.hypervolume_improvement(buf, np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match="candidate must be a 1-D array"):
        impl.hypervolume_improvement(buf, np.ones((1, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="candidate contains NaN"):
        impl.hypervolume_improvement(buf, np.array([1.0, np.nan, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="buffer must be a 2-D array"):
        impl.hypervolume_improvement(np.ones(3), np.ones(3), np.zeros(3))


# --------------------------------------------------------------------------------------------------------------
# Properties against brute force
# --------------------------------------------------------------------------------------------------------------


@PROPERTY
@given(integer_sets(max_n=14, ks=(1, 2, 3, 4, 5, 6)))
def test_non_dominated_matches_pairwise(impl, case):
    pts, _ = case
    np.testing.assert_array_equal(impl.non_dominated(pts), brute_non_dominated(pts))


@PROPERTY
@given(float_sets(max_n=14, ks=(2, 3, 4)))
def test_non_dominated_matches_pairwise_floats(impl, case):
    pts, _ = case
    np.testing.assert_array_equal(impl.non_dominated(pts), brute_non_dominated(pts))


def test_non_dominated_blocked_path_large(impl):
    # Enough points, with many ties, to cross several blocks of the K >= 4 filter and the 3-D sweep.
    rng = np.random.default_rng(7)
    for k in (3, 4, 6):
        pts = rng.integers(0, 6, size=(400, k)).astype(float)
        sphere = np.abs(rng.standard_normal((300, k)))
        sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
        for case in (pts, np.vstack([sphere, sphere[:50] * 0.9, sphere[:20]])):
            np.testing.assert_array_equal(impl.non_dominated(case), brute_non_dominated_fast(case))


def brute_non_dominated_fast(points: np.ndarray) -> np.ndarray:
    ge = np.all(points[None, :, :] >= points[:, None, :], axis=2)
    gt = np.any(points[None, :, :] > points[:, None, :], axis=2)
    return ~np.any(ge & gt, axis=1)


@PROPERTY
@given(integer_sets(max_n=8, ks=(1, 2, 3, 4, 5)))
def test_hypervolume_matches_inclusion_exclusion_integers(impl, case):
    pts, ref = case
    assert close(impl.hypervolume(pts, ref), hv_inclusion_exclusion(pts, ref))


@PROPERTY
@given(float_sets(max_n=8))
def test_hypervolume_matches_inclusion_exclusion_floats(impl, case):
    pts, ref = case
    expected = hv_inclusion_exclusion(pts, ref)
    # Inclusion-exclusion itself cancels up to 2^n terms of size <= 1, so bound by the largest box, not by HV.
    assert close(impl.hypervolume(pts, ref), expected, scale=1.0)


@PROPERTY
@given(integer_sets(max_n=12, ks=(2, 3, 4, 5), low=-1, high=6))
def test_hypervolume_matches_grid(impl, case):
    pts, ref = case
    assert close(impl.hypervolume(pts, ref), hv_grid(pts, ref))


@PROPERTY
@given(integer_sets(max_n=10, ks=(1, 2, 3, 4, 5)))
def test_contributions_match_recomputation(impl, case):
    pts, ref = case
    total = impl.hypervolume(pts, ref)
    got = impl.hypervolume_contributions(pts, ref)
    assert got.shape == (len(pts),)
    for i in range(len(pts)):
        expected = total - hv_grid(np.delete(pts, i, axis=0), ref)
        assert close(got[i], expected, scale=total), (i, got[i], expected)
    assert np.all(got >= 0.0)
    assert np.all(got[~impl.non_dominated(pts)] == 0.0)


@PROPERTY
@given(float_sets(max_n=8, ks=(2, 3, 4)))
def test_contributions_match_recomputation_floats(impl, case):
    pts, ref = case
    total = impl.hypervolume(pts, ref)
    got = impl.hypervolume_contributions(pts, ref)
    for i in range(len(pts)):
        expected = total - impl.hypervolume(np.delete(pts, i, axis=0), ref)
        assert close(got[i], expected, scale=total), (i, got[i], expected)


@PROPERTY
@given(integer_sets(max_n=9, ks=(1, 2, 3, 4, 5)), st.data())
def test_improvement_matches_difference(impl, case, data):
    pts, ref = case
    k = len(ref)
    cand = np.array(data.draw(st.lists(st.integers(-1, 6), min_size=k, max_size=k)), dtype=float)
    got = impl.hypervolume_improvement(pts, cand, ref)
    expected = hv_grid(np.vstack([pts, cand[None, :]]), ref) - hv_grid(pts, ref)
    assert close(got, expected)
    assert got >= 0.0


@PROPERTY
@given(float_sets(max_n=10, ks=(2, 3, 4, 5)), st.randoms(use_true_random=False))
def test_hypervolume_invariances(impl, case, rnd):
    pts, ref = case
    base = impl.hypervolume(pts, ref)
    perm = list(range(len(pts)))
    rnd.shuffle(perm)
    assert close(impl.hypervolume(pts[perm], ref), base)
    # Permuting the objectives (of the points and ref together) leaves the volume unchanged.
    cols = list(range(len(ref)))
    rnd.shuffle(cols)
    assert close(impl.hypervolume(pts[:, cols], ref[cols]), base)
    # Scaling objective j by s_j > 0 scales the volume by prod(s); translating both leaves it unchanged.
    scale = np.array([2.0, 0.5, 4.0, 0.25, 8.0][: len(ref)])
    assert close(impl.hypervolume(pts * scale, ref * scale), base * float(np.prod(scale)))
    assert close(impl.hypervolume(pts + 3.0, ref + 3.0), base, scale=max(base, 1.0) * 8)
    # Adding dominated points changes nothing.
    if len(pts):
        assert close(impl.hypervolume(np.vstack([pts, pts - 0.1]), ref), base)


# --------------------------------------------------------------------------------------------------------------
# Larger sets: internal consistency, then rewards.pareto (moocore) against the oracle
# --------------------------------------------------------------------------------------------------------------


def _sphere(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    x = np.abs(rng.standard_normal((n, k)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_large_3d_matches_grid_on_integers(impl):
    rng = np.random.default_rng(3)
    pts = rng.integers(1, 30, size=(60, 3)).astype(float)
    ref = np.zeros(3)
    assert close(impl.hypervolume(pts, ref), hv_grid(pts, ref))


def test_contributions_larger_sets_match_recomputation(impl):
    # Exercises the 2-D path (many stairs owning dominated points) and the limit-set path for K >= 3.
    rng = np.random.default_rng(5)
    for k, n in ((2, 300), (3, 60), (4, 30)):
        pts = rng.integers(0, 12, size=(n, k)).astype(float) + rng.random((n, k)) * 0.5
        pts = np.vstack([pts, pts[:5]])  # a few duplicates
        ref = np.zeros(k)
        total = impl.hypervolume(pts, ref)
        got = impl.hypervolume_contributions(pts, ref)
        expected = np.array([total - impl.hypervolume(np.delete(pts, i, axis=0), ref) for i in range(len(pts))])
        np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * total)
        assert np.count_nonzero(got) > 0


def _fronts(rng: np.random.Generator, n: int, k: int) -> list[np.ndarray]:
    """Near-fronts (sphere pushed in by up to 1%), uniform clouds (mostly dominated) and a coarse grid (ties,
    duplicates, points on the reference point's faces)."""
    near = _sphere(rng, n, k) * rng.uniform(0.99, 1.0, size=(n, 1))
    return [near, rng.random((n, k)), np.round(rng.random((n, k)) * 8) / 8]


@pytest.mark.parametrize(("k", "n"), [(2, 400), (3, 200), (4, 80), (5, 40)])
def test_moocore_matches_oracle_on_random_fronts(k, n):
    rng = np.random.default_rng(100 + k)
    for pts, ref in zip(_fronts(rng, n, k), (np.full(k, -0.05), np.full(k, -0.05), np.zeros(k)), strict=True):
        total = pareto_oracle.hypervolume(pts, ref)
        assert close(hypervolume(pts, ref), total), (k, n)
        np.testing.assert_array_equal(non_dominated(pts), pareto_oracle.non_dominated(pts))
        # Contributions to 1e-9 of the total volume (each is a difference of volumes of that size).
        got = hypervolume_contributions(pts, ref)
        np.testing.assert_allclose(got, pareto_oracle.hypervolume_contributions(pts, ref), rtol=0, atol=RTOL * total)
        for cand in (pts[0] * 1.01, rng.random(k), np.full(k, 0.5)):
            expected = pareto_oracle.hypervolume_improvement(pts, cand, ref)
            assert close(hypervolume_improvement(pts, cand, ref), expected, scale=total), (k, cand)
        # Only a mutually non-dominated set takes moocore's fast contribution path for K >= 3: check it too.
        front = pts[pareto_oracle.non_dominated(pts)]
        np.testing.assert_allclose(
            hypervolume_contributions(front, ref),
            pareto_oracle.hypervolume_contributions(front, ref),
            rtol=0,
            atol=RTOL * total,
        )


def test_moocore_matches_oracle_on_a_large_set():
    rng = np.random.default_rng(17)
    for k, n in ((2, 20_000), (3, 3_000), (4, 300), (5, 100)):
        pts = _sphere(rng, n, k) * rng.uniform(0.99, 1.0, size=(n, 1))
        ref = np.zeros(k)
        assert close(hypervolume(pts, ref), pareto_oracle.hypervolume(pts, ref)), (k, n)
        np.testing.assert_array_equal(non_dominated(pts), pareto_oracle.non_dominated(pts))


@pytest.mark.parametrize(("k", "n", "seed"), [(4, 120, 28), (5, 50, 5)])
def test_contributions_k4_k5_match_oracle(k, n, seed):
    # Near-fronts on which moocore 0.3.2's own hv_contributions returns 0 for a non-dominated point whose
    # contribution is small (1e-8 and 2e-7 of the volume); rewards.pareto computes K >= 4 contributions from
    # limit-set volumes instead, which agree with the oracle.
    rng = np.random.default_rng(seed)
    pts = _sphere(rng, n, k) * rng.uniform(0.99, 1.0, size=(n, 1))
    ref = np.zeros(k)
    total = pareto_oracle.hypervolume(pts, ref)
    expected = pareto_oracle.hypervolume_contributions(pts, ref)
    np.testing.assert_allclose(hypervolume_contributions(pts, ref), expected, rtol=0, atol=RTOL * total)
