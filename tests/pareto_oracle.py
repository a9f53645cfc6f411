"""The project's own exact Pareto utilities, kept as the test oracle for rewards.pareto (which runs on moocore).

Independent of moocore (a sort, the HV3D sweep and WFG written here), checked against brute force (pairwise
dominance, inclusion-exclusion, a coordinate grid) in tests/test_pareto.py, and used there and in
bench/bench_hypervolume.py as the reference the moocore-backed functions are compared with and timed against.
Same API and semantics as rewards.pareto: every objective maximised.

A point ``p`` *dominates* ``q`` when ``p >= q`` in every objective and ``p > q`` in at least one; two equal
points therefore do not dominate each other. The *hypervolume* of a set w.r.t. a reference point ``ref`` is the
Lebesgue measure of the union of the boxes ``[ref, p]``: the region every point of which dominates ``ref`` and
is dominated by (or equal to) some point of the set. A point that is not strictly better than ``ref`` in every
objective spans an empty box and contributes nothing.

Everything here is exact up to floating-point rounding (no Monte Carlo):

* :func:`non_dominated` - a sort and a running maximum for K = 2 (O(n log n)); a sweep over a 2-D staircase
  for K = 3 (O(n log n) searches); for K >= 4, blocks of points in decreasing coordinate-sum order compared,
  vectorised, against the front found so far (O(n * front * K)).
* :func:`hypervolume` - K = 1 a maximum; K = 2 a sort and a running maximum (O(n log n)); K = 3 the HV3D
  dimension sweep (Beume, Fonseca, Lopez-Ibanez, Paquete & Vahrenhold, 2009) over a sorted 2-D staircase;
  K >= 4 the WFG algorithm (While, Bradstreet & Barone, 2012) with points sorted on the last objective so
  that every limit set lives in K - 1 objectives, bottoming out in the 3-D sweep.
* :func:`hypervolume_contributions` and :func:`hypervolume_improvement` - the exclusive volume of a point,
  ``HV(S) - HV(S without p)``. For K = 2 all contributions come from one vectorised pass over the staircase
  (O(n log n)), dominated points included (removing a front point uncovers what they dominate). Otherwise each
  is computed as ``vol(box of p) - HV(limit set)`` (the other points clipped to p's box), which avoids
  subtracting two large, nearly equal volumes; K >= 3 contributions therefore cost one K-D hypervolume per
  distinct non-dominated point (O(n^2 log n) for K = 3).

Inputs are ``float64``-convertible arrays: ``points`` of shape [n, K] (n may be 0), ``ref`` of shape [K]. NaN
and infinite values are rejected with a ``ValueError`` naming the argument.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

__all__ = ["hypervolume", "hypervolume_contributions", "hypervolume_improvement", "non_dominated"]

# Upper bound on the number of pairwise comparisons (block x front x K booleans) held at once by the K >= 4
# non-dominance filter.
_BLOCK_BUDGET = 1 << 22


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


def _as_float_array(value: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric (convertible to float64): {exc}") from exc
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.size and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "infinite"
        where = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{name} contains {bad} values (first at index {tuple(where)}); all values must be finite")


def _validate_points(points: object, name: str = "points") -> np.ndarray:
    arr = _as_float_array(points, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape [n, K], got ndim={arr.ndim} (shape {arr.shape})")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one objective (K >= 1), got shape {arr.shape}")
    _check_finite(arr, name)
    # Adding +0.0 turns -0.0 into +0.0, so equal points are also bitwise equal.
    return arr + 0.0


def _validate_vector(value: object, k: int, name: str, points_name: str) -> np.ndarray:
    """A finite [K] point named `name` that must match the K of the point set named `points_name`."""
    arr = _as_float_array(value, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of shape [K], got ndim={arr.ndim} (shape {arr.shape})")
    if arr.shape[0] != k:
        raise ValueError(
            f"shape mismatch: {points_name} has K={k} objectives but {name} has {arr.shape[0]} "
            f"({name} shape {arr.shape})"
        )
    _check_finite(arr, name)
    return arr + 0.0


def _validate_ref(ref: object, k: int, points_name: str = "points") -> np.ndarray:
    return _validate_vector(ref, k, "ref", points_name)


# --------------------------------------------------------------------------------------------------------------
# Non-dominance
# --------------------------------------------------------------------------------------------------------------


def _unique_rows(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of ``p`` [n, K] sorted lexicographically ascending [m, K], the inverse map [n], counts [m]."""
    n, k = p.shape
    if n == 0:
        return p, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    order = np.lexsort(p.T[::-1])
    s = p[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.any(s[1:] != s[:-1], axis=1, out=new[1:])
    group = np.cumsum(new) - 1
    inverse = np.empty(n, dtype=np.intp)
    inverse[order] = group
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, n))
    return s[starts], inverse, counts


def _nd_unique(u: np.ndarray) -> np.ndarray:
    """Non-dominated mask [m] of ``u`` [m, K], rows distinct and sorted lexicographically ascending.

    Distinct rows make ``q >= p`` with ``q != p`` a domination.
    """
    m, k = u.shape
    if m <= 1:
        return np.ones(m, dtype=bool)
    if k == 1:
        return u[:, 0] == u[:, 0].max()
    if k == 2:
        return _nd_unique_2d(u)
    if k == 3:
        return _nd_unique_3d(u)
    return _nd_unique_blocked(u)


def _nd_unique_2d(u: np.ndarray) -> np.ndarray:
    # Sorted by x descending then y descending, every point that could dominate p comes before p, and an earlier
    # point dominates p exactly when its y is >= p's y: p is dominated iff the running max of y before it >= p.y.
    y = u[::-1, 1]  # rows are sorted ascending; reversed they are (x, y) descending
    best_before = np.empty_like(y)
    best_before[0] = -np.inf
    np.maximum.accumulate(y[:-1], out=best_before[1:])
    return (best_before < y)[::-1].copy()


def _nd_unique_3d(u: np.ndarray) -> np.ndarray:
    # Lexicographic sweep on (x, y, z) descending: p is dominated iff some earlier point has y >= p.y and
    # z >= p.z, a query on the 2-D staircase (ys ascending, zs descending) of the points seen so far.
    order = np.arange(len(u) - 1, -1, -1)  # rows are sorted ascending; reversed they are (x, y, z) descending
    ys: list[float] = []
    neg_zs: list[float] = []  # -z, ascending along the staircase
    keep = np.zeros(len(order), dtype=bool)
    for pos, (y, z) in enumerate(u[order, 1:].tolist()):
        i = bisect_left(ys, y)
        if i < len(ys) and -neg_zs[i] >= z:
            continue
        keep[pos] = True
        hi = bisect_right(ys, y, lo=i)
        lo = bisect_left(neg_zs, -z, hi=hi)
        ys[lo:hi] = [y]
        neg_zs[lo:hi] = [-z]
    mask = np.empty(len(order), dtype=bool)
    mask[order] = keep
    return mask


def _nd_unique_blocked(u: np.ndarray) -> np.ndarray:
    # Order by coordinate sum descending, ties broken lexicographically descending. Rounded sums are monotone, so
    # a dominator always comes strictly earlier; by transitivity p is dominated iff a non-dominated earlier point
    # dominates it. Each block is compared with the front so far and with itself (any other row >= p dominates).
    m, k = u.shape
    keys = [-u[:, j] for j in range(k - 1, -1, -1)]
    keys.append(-u.sum(axis=1))
    order = np.lexsort(keys)
    pts = u[order]
    cols = np.ascontiguousarray(pts.T)
    keep = np.zeros(m, dtype=bool)
    front_idx = np.empty(0, dtype=np.intp)
    front_cols = cols[:, :0]
    start = 0
    while start < m:
        size = int(min(m - start, max(32, _BLOCK_BUDGET // (k * max(len(front_idx), 1)))))
        size = min(size, 2048)
        stop = start + size
        blk = cols[:, start:stop]
        dominated = np.zeros(size, dtype=bool)
        if front_idx.size:
            ge = front_cols[0][None, :] >= blk[0][:, None]
            for j in range(1, k):
                ge &= front_cols[j][None, :] >= blk[j][:, None]
            dominated |= ge.any(axis=1)
        ge = blk[0][None, :] >= blk[0][:, None]
        for j in range(1, k):
            ge &= blk[j][None, :] >= blk[j][:, None]
        np.fill_diagonal(ge, False)
        dominated |= ge.any(axis=1)
        new = np.flatnonzero(~dominated) + start
        keep[new] = True
        front_idx = np.concatenate([front_idx, new])
        front_cols = cols[:, front_idx]
        start = stop
    mask = np.empty(m, dtype=bool)
    mask[order] = keep
    return mask


def _nd_filter(points: np.ndarray) -> np.ndarray:
    """The distinct non-dominated rows of ``points`` [n, K] (validated, no -0.0), in no particular order."""
    if len(points) <= 1:
        return points
    u = _unique_rows(points)[0]
    return u[_nd_unique(u)]


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Mask of the points no other point dominates (all objectives maximised).

    Args:
        points: [n, K] objective values, n >= 0, K >= 1, all finite.

    Returns:
        [n] bool, True where no other point is >= in every objective and > in at least one. Equal points do not
        dominate each other, so every copy of a non-dominated point is True.
    """
    pts = _validate_points(points)
    n = pts.shape[0]
    if n <= 1:
        return np.ones(n, dtype=bool)
    u, inverse, _ = _unique_rows(pts)
    return _nd_unique(u)[inverse]


# --------------------------------------------------------------------------------------------------------------
# Hypervolume
# --------------------------------------------------------------------------------------------------------------


def _hv2d(p: np.ndarray, ref: np.ndarray) -> float:
    # Sweep x descending: each point adds a strip of width (x - ref_x) between the highest y seen so far and its y.
    # Points tied in x may come in any order: their strips telescope to the same total.
    if len(p) == 0:
        return 0.0
    order = np.argsort(-p[:, 0])
    x = p[order, 0]
    y = p[order, 1]
    top = np.maximum.accumulate(y)
    below = np.empty_like(top)
    below[0] = ref[1]
    below[1:] = top[:-1]
    return float(np.sum((x - ref[0]) * np.maximum(y - below, 0.0)))


def _hv3d(p: np.ndarray, ref: np.ndarray) -> float:
    # HV3D sweep on z descending. The (x, y) projections of the points seen so far form a 2-D staircase
    # (xs ascending, ys descending) whose dominated area is kept up to date; each slab between consecutive z
    # values adds area * thickness. Inserting a point adds exactly the part of its rectangle that lies above the
    # staircase, summed over the stairs it removes (all terms >= 0, so no cancellation).
    if len(p) == 0:
        return 0.0
    rx, ry, rz = (float(v) for v in ref)
    order = np.argsort(-p[:, 2], kind="stable")
    xs: list[float] = []
    neg_ys: list[float] = []  # -y, ascending along the staircase
    area = 0.0
    volume = 0.0
    z_prev = None
    for x, y, z in p[order].tolist():
        if z_prev is not None:
            volume += area * (z_prev - z)
        z_prev = z
        i = bisect_left(xs, x)
        m = len(xs)
        if i < m and -neg_ys[i] >= y:
            continue  # weakly dominated in (x, y) by a point with larger or equal z
        hi = bisect_right(xs, x, lo=i)
        lo = bisect_left(neg_ys, -y, hi=hi)
        left = xs[lo - 1] if lo > 0 else rx
        delta = 0.0
        for j in range(lo, hi):
            delta += (xs[j] - left) * (y + neg_ys[j])
            left = xs[j]
        floor = -neg_ys[hi] if hi < m else ry
        delta += (x - left) * (y - floor)
        area += delta
        xs[lo:hi] = [x]
        neg_ys[lo:hi] = [-y]
    volume += area * (z_prev - rz)
    return volume


def _hv_exact(p: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of ``p`` [n, K] whose every row is strictly better than ``ref`` [K] in every objective."""
    n, k = p.shape
    if n == 0:
        return 0.0
    if k == 1:
        return float(p[:, 0].max() - ref[0])
    if k == 2:
        return _hv2d(p, ref)
    if k == 3:
        return _hv3d(p, ref)
    return _hv_wfg(_nd_filter(p), ref)


def _hv_wfg(p: np.ndarray, ref: np.ndarray) -> float:
    # WFG: HV(S) = sum_i [vol(p_i) - HV(limit(p_{i+1..n}, p_i))] with limit(q, p) = min(q, p). With the points
    # sorted on the last objective ascending, every later point is >= p_i there, so the limit set is flat in that
    # objective at p_i's value and its hypervolume factors as (p_i[-1] - ref[-1]) * HV_{K-1}(first K-1 columns).
    n, k = p.shape
    if n == 1:
        return float(np.prod(p[0] - ref))
    p = p[np.argsort(p[:, -1], kind="stable")]
    head = p[:, :-1]
    ref_head = ref[:-1]
    heights = p[:, -1] - ref[-1]
    boxes = np.prod(head - ref_head, axis=1)
    total = 0.0
    for i in range(n):
        rest = head[i + 1 :]
        if len(rest):
            inner = _hv_exact(np.minimum(rest, head[i]), ref_head)
        else:
            inner = 0.0
        total += heights[i] * (boxes[i] - inner)
    return total


def _strictly_better(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    keep = points[:, 0] > ref[0]
    for j in range(1, len(ref)):
        keep &= points[:, j] > ref[j]
    return points[keep]


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` and dominating ``ref`` (all objectives maximised).

    Args:
        points: [n, K] objective values, n >= 0, K >= 1, all finite.
        ref: [K] reference point, finite.

    Returns:
        The Lebesgue measure of the union of the boxes ``[ref, p]``; 0.0 for an empty set. Points that are not
        strictly better than ``ref`` in every objective contribute nothing.

    Cost: O(n log n) for K <= 2, O(n log n) searches plus list updates for K = 3, WFG for K >= 4.
    """
    pts = _validate_points(points)
    r = _validate_ref(ref, pts.shape[1])
    return _hv_exact(_strictly_better(pts, r), r)


def _exclusive(p: np.ndarray, others: np.ndarray, ref: np.ndarray) -> float:
    """vol([ref, p]) - HV(min(others, p)): what ``p`` [K] adds to ``others`` [m, K] (both strictly above ref)."""
    box = float(np.prod(p - ref))
    if len(others) == 0:
        return box
    limited = np.minimum(others, p)
    if np.any(np.all(limited == p, axis=1)):
        return 0.0  # p is weakly dominated by some other point
    return max(box - _hv_exact(limited, ref), 0.0)


def _contributions_2d(front: np.ndarray, dominated: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Exclusive areas [m] of the distinct 2-D front [m, 2] given the distinct dominated points [d, 2].

    On the staircase (x ascending, y descending), front point j owns the rectangle x in (x_{j-1}, x_j],
    y in (y_{j+1}, y_j]; no other front point reaches into it, but dominated points may. A dominated point lies
    in at most one such rectangle, and the rectangles' y ranges are disjoint and decrease with j, so one sweep
    over all dominated points (rectangle index descending, x descending) gives every rectangle's covered area.
    """
    order = np.argsort(front[:, 0], kind="stable")
    xs = front[order, 0]
    ys = front[order, 1]
    left = np.insert(xs[:-1], 0, ref[0])
    floor = np.append(ys[1:], ref[1])
    owned = (xs - left) * (ys - floor)
    if len(dominated):
        j = np.searchsorted(xs, dominated[:, 0], side="left")  # first stair with x >= q.x; it has y >= q.y
        inside = dominated[:, 1] > floor[j]
        q = dominated[inside]
        j = j[inside]
        if len(q):
            sweep = np.lexsort((-q[:, 0], -j))
            q = q[sweep]
            j = j[sweep]
            top = np.maximum.accumulate(q[:, 1])
            below = np.empty_like(top)
            below[0] = -np.inf
            below[1:] = top[:-1]
            below = np.maximum(below, floor[j])
            strips = (q[:, 0] - left[j]) * np.maximum(q[:, 1] - below, 0.0)
            owned = owned - np.bincount(j, weights=strips, minlength=len(xs))
    out = np.empty(len(xs))
    out[order] = np.maximum(owned, 0.0)
    return out


def hypervolume_contributions(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Exclusive hypervolume contribution of every point: ``HV(S) - HV(S without point i)``.

    Args:
        points: [n, K] objective values, n >= 0, K >= 1, all finite.
        ref: [K] reference point, finite.

    Returns:
        [n] float64, >= 0. Zero for a dominated point, for every copy of a repeated point (removing one copy
        leaves the volume unchanged) and for a point not strictly better than ``ref`` in every objective.

    Cost: O(n log n) for K <= 2; otherwise one limit-set hypervolume per distinct non-dominated point
    (about 0.5 s for 500 points in 3-D).
    """
    pts = _validate_points(points)
    r = _validate_ref(ref, pts.shape[1])
    n, k = pts.shape
    out = np.zeros(n, dtype=np.float64)
    if n == 0:
        return out
    above = np.flatnonzero(np.all(pts > r, axis=1))
    if above.size == 0:
        return out
    sub = pts[above]
    u, inverse, counts = _unique_rows(sub)
    nd = _nd_unique(u)
    # Only a non-dominated point that occurs once can have a non-zero exclusive volume.
    cand = nd & (counts == 1)
    contrib_u = np.zeros(len(u), dtype=np.float64)
    if not cand.any():
        return out
    if k == 1:
        top = np.sort(u[:, 0])
        second = top[-2] if len(top) > 1 else r[0]
        contrib_u[cand] = u[cand, 0] - second
    elif k == 2:
        contrib_u[nd] = _contributions_2d(u[nd], u[~nd], r)
        contrib_u[~cand] = 0.0
    else:
        for ui in np.flatnonzero(cand):
            contrib_u[ui] = _exclusive(u[ui], np.delete(u, ui, axis=0), r)
    out[above] = contrib_u[inverse]
    return out


def hypervolume_improvement(buffer: np.ndarray, candidate: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume gained by adding ``candidate`` to ``buffer``: ``HV(buffer + {candidate}) - HV(buffer)``.

    Args:
        buffer: [n, K] objective values already held, n >= 0, all finite.
        candidate: [K] the new point, finite.
        ref: [K] reference point, finite.

    Returns:
        The improvement, >= 0; exactly 0.0 when the candidate is weakly dominated by a buffer point or is not
        strictly better than ``ref`` in every objective. Computed as the candidate's box minus the hypervolume
        of the buffer clipped to that box, which is exact and avoids cancelling two large volumes.
    """
    buf = _validate_points(buffer, "buffer")
    k = buf.shape[1]
    cand = _validate_vector(candidate, k, "candidate", "buffer")
    r = _validate_ref(ref, k, "buffer")
    if not np.all(cand > r):
        return 0.0
    others = _strictly_better(buf, r)
    return _exclusive(cand, others, r)
