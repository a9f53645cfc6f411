"""The numbers of a Pareto report, as pure functions of the runs' evaluation points: the reference point, the
non-dominated front, hypervolume and per-run contributions, dominance between final points, recipe differences,
and the overoptimization series (gold vs proxies over KL). Every objective is maximised.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignment.errors import ConfigError, DataError
from alignment.reports.runs import RunRecord, finite_number
from rewards.pareto import hypervolume, hypervolume_improvement, non_dominated

# Recipe keys that differ between any two runs by construction and say nothing about the recipe.
IGNORED_RECIPE_KEYS = ("output_dir", "source")


def auto_reference(points: np.ndarray) -> np.ndarray:
    """The automatic reference point of points [n, K] (n >= 1): per objective min - 10% of the range.

    When an objective has a single value v the margin is 0.1 x |v| (at least 1e-6), so the reference is always
    strictly below every point.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or len(pts) == 0:
        raise ValueError(f"expected points [n >= 1, K], got shape {pts.shape}")
    low, high = pts.min(axis=0), pts.max(axis=0)
    margin = 0.1 * (high - low)
    flat = margin <= 0
    margin[flat] = np.maximum(0.1 * np.abs(low[flat]), 1e-6)
    return low - margin


def parse_reference(text: str, k: int) -> np.ndarray | None:
    """``--ref``: None for "auto", else K comma-separated finite numbers (ConfigError naming --ref otherwise)."""
    if text.strip().lower() == "auto":
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--ref: expected 'auto' or {k} comma-separated numbers, got {text!r}") from None
    if len(values) != k:
        raise ConfigError(f"--ref: {len(values)} values for {k} objectives; give one per objective or 'auto'")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--ref: values must be finite, got {text!r}")
    return np.asarray(values, dtype=np.float64)


def dominance_matrix(points: np.ndarray) -> np.ndarray:
    """D [n, n] bool: D[i, j] when point i dominates point j (>= in every objective, > in one; maximised)."""
    pts = np.asarray(points, dtype=np.float64)
    ge = np.all(pts[:, None, :] >= pts[None, :, :], axis=2)
    gt = np.any(pts[:, None, :] > pts[None, :, :], axis=2)
    return ge & gt


def _sole_dominating_run(front: np.ndarray, front_owner: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each point of `others` [d, K] (each dominated by some point of `front` [f, K]), the run owning every
    front point that dominates it, or -1 when front points of two or more runs dominate it. Blocked so that at
    most ~4M comparisons are held at once."""
    out = np.full(len(others), -1, dtype=np.int64)
    if len(others) == 0 or len(front) == 0:
        return out
    owner = front_owner.astype(np.int64)
    block = max(1, (1 << 22) // max(1, len(front) * front.shape[1]))
    for start in range(0, len(others), block):
        q = others[start : start + block]
        ge = np.all(front[None, :, :] >= q[:, None, :], axis=2)
        dominates = ge & np.any(front[None, :, :] > q[:, None, :], axis=2)
        high = np.where(dominates, owner[None, :], -1).max(axis=1)
        low = np.where(dominates, owner[None, :], np.iinfo(np.int64).max).min(axis=1)
        out[start : start + block] = np.where((high == low) & (high >= 0), high, -1)
    return out


def run_contributions(points: np.ndarray, run_of_point: np.ndarray, runs: int, ref: np.ndarray) -> np.ndarray:
    """Each run's exclusive hypervolume [runs]: HV(all points) - HV(all points except that run's).

    Only runs with a point on the front can contribute (removing the others leaves the front unchanged). The
    hypervolume without run r, HV(O), needs only O = the other runs' front points plus the dominated points
    that only run r's front points dominate (the ones its removal can uncover), about the size of the front.
    When run r has a single distinct front point p (the usual case), HV(all) = HV(O + p), so the contribution
    is the exact improvement of p over O (p's box minus the hypervolume of O clipped to it), cheaper than HV(O).
    """
    pts = np.asarray(points, dtype=np.float64)
    owner = np.asarray(run_of_point)
    out = np.zeros(runs, dtype=np.float64)
    if len(pts) == 0:
        return out
    total = hypervolume(pts, ref)
    nd = non_dominated(pts)
    front_idx, dominated_idx = np.flatnonzero(nd), np.flatnonzero(~nd)
    sole = _sole_dominating_run(pts[front_idx], owner[front_idx], pts[dominated_idx])
    for r in np.unique(owner[front_idx]):
        uncovered = dominated_idx[(sole == r) & (owner[dominated_idx] != r)]
        rest = np.concatenate([front_idx[owner[front_idx] != r], uncovered])
        own = np.unique(pts[front_idx[owner[front_idx] == r]], axis=0)
        if not len(rest):
            out[int(r)] = total
        elif len(own) == 1:
            out[int(r)] = hypervolume_improvement(pts[rest], own[0], ref)
        else:
            out[int(r)] = max(total - hypervolume(pts[rest], ref), 0.0)
    return out


def recipe_differences(recipes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{key: {run: value}} for every flattened recipe key whose value is not the same in all runs (a key
    missing from a run counts as a difference; that run's value is None). Keys in IGNORED_RECIPE_KEYS are left
    out."""
    keys: list[str] = []
    seen: set[str] = set()
    for flat in recipes.values():
        for key in flat:
            if key not in seen:
                seen.add(key)
                keys.append(key)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        if key in IGNORED_RECIPE_KEYS:
            continue
        values = {run: flat.get(key) for run, flat in recipes.items()}
        distinct = {json.dumps(v, sort_keys=True, default=str) for v in values.values()}
        if len(distinct) > 1 or any(key not in flat for flat in recipes.values()):
            out[key] = values
    return out


def choose_objectives(
    runs: Sequence[RunRecord], requested: list[str] | None, gold: Sequence[str] = ()
) -> tuple[list[str], list[tuple[RunRecord, str]]]:
    """The report's objectives and the runs that lack them.

    With `requested`, those names, and runs missing any are rejected. Otherwise the most common objective
    set among the runs (the first run's on a tie; `gold` names left out), and runs with another set are
    rejected. Returns (objectives, [(rejected run, reason)]).
    """
    gold_set = set(gold)
    if requested is not None:
        objectives = list(requested)
        rejected = []
        for run in runs:
            missing = [o for o in objectives if o not in run.objectives and o not in run.gold_names]
            if missing:
                rejected.append((run, f"has no {', '.join(missing)} (its objectives: {', '.join(run.objectives)})"))
        return objectives, rejected
    ordered = [[o for o in run.objectives if o not in gold_set] for run in runs]
    sets = [frozenset(names) for names in ordered]
    counts = Counter(sets)
    best = max(counts.values()) if counts else 0
    chosen = next((names for names, s in zip(ordered, sets) if counts[s] == best), [])
    rejected = [
        (
            run,
            f"objectives [{', '.join(names)}] differ from the report's [{', '.join(chosen)}]; pass "
            "--objectives to compare on common ones",
        )
        for run, names, s in zip(runs, ordered, sets)
        if s != frozenset(chosen)
    ]
    return list(chosen), rejected


def moving_average(values: Sequence[float | None], window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values at each position (NaN until the first finite one)."""
    x = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    if window <= 1 or len(x) == 0:
        return x
    finite = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    total, count = csum[idx] - csum[lo], ccount[idx] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def overoptimization_series(run: RunRecord) -> dict[str, dict[str, Any]]:
    """Per gold objective of a run, the points for the proxy-vs-gold picture, in training order.

    Source: the evaluated checkpoints that have the gold value and a KL estimate; when fewer than two have, the
    metrics.jsonl records that log a "gold" mapping next to "kl". Returns {gold name: {"source": "eval" or
    "metrics", "steps", "kl", "gold": [values], "proxies": {objective: [values]}, "peak": index of the highest
    gold value}}; gold objectives with fewer than two usable points are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in run.gold_names:
        rows = [
            (p.step, p.kl, p.gold[name], dict(p.values))
            for p in run.points
            if p.kl is not None and finite_number(p.gold.get(name)) is not None
        ]
        source = "eval"
        if len(rows) < 2:
            rows = [
                (r["step"], r["kl"], float(r["gold"][name]), dict(r.get("objectives") or {}))
                for r in run.metrics
                if "kl" in r and finite_number((r.get("gold") or {}).get(name)) is not None
            ]
            source = "metrics"
        if len(rows) < 2:
            continue
        rows.sort(key=lambda row: row[0])
        gold = [row[2] for row in rows]
        proxies = {o: [finite_number(row[3].get(o)) for row in rows] for o in run.objectives}
        out[name] = {
            "source": source,
            "steps": [row[0] for row in rows],
            "kl": [row[1] for row in rows],
            "gold": gold,
            "proxies": proxies,
            "peak": int(np.argmax(gold)),
        }
    return out


@dataclass
class Analysis:
    """The report's numbers: runs, points matrix, front, hypervolume, contributions, dominance."""

    runs: list[RunRecord]
    objectives: list[str]
    gold: list[str]
    points: np.ndarray  # [n, K]
    run_of_point: np.ndarray  # [n]
    step_of_point: np.ndarray  # [n]
    non_dominated: np.ndarray  # [n] bool
    reference: np.ndarray  # [K]
    reference_mode: str
    hypervolume: float
    contributions: np.ndarray  # [runs]
    final_index: np.ndarray  # [runs] index of each run's final point
    final_dominance: np.ndarray  # [runs, runs] bool
    skipped: list[tuple[str, str]]


def analyse(
    runs: list[RunRecord],
    objectives: list[str],
    gold: list[str],
    reference: np.ndarray | None,
    skipped: list[tuple[str, str]],
    steps: str = "all",
) -> Analysis:
    """Points, front, hypervolume, per-run contributions and final-point dominance of readable runs.

    Points with a missing (non-finite) objective value are left out with a note on their run; a run left with
    no point is skipped. `steps`: "all" evaluated steps or only each run's "final" one.
    """
    kept_runs: list[RunRecord] = []
    rows, owner, step_of = [], [], []
    for run in runs:
        candidates = run.points[-1:] if steps == "final" else run.points
        usable = []
        for point in candidates:
            values = [point.values.get(o, point.gold.get(o)) for o in objectives]
            if any(v is None for v in values):
                run.notes.append(f"step {point.step}: a missing objective value, point left out")
                continue
            usable.append((point.step, values))
        if not usable:
            skipped.append((str(run.path), "no evaluation with a value for every objective"))
            continue
        for step, values in usable:
            rows.append(values)
            owner.append(len(kept_runs))
            step_of.append(step)
        kept_runs.append(run)
    if not kept_runs:
        raise DataError("no run folder could be reported: " + "; ".join(f"{p}: {r}" for p, r in skipped))
    pts = np.asarray(rows, dtype=np.float64)
    owner_arr = np.asarray(owner, dtype=np.intp)
    steps_arr = np.asarray(step_of, dtype=np.int64)
    ref = auto_reference(pts) if reference is None else np.asarray(reference, dtype=np.float64)
    nd = non_dominated(pts)
    final_index = np.array([np.flatnonzero(owner_arr == r)[-1] for r in range(len(kept_runs))], dtype=np.intp)
    return Analysis(
        runs=kept_runs,
        objectives=objectives,
        gold=gold,
        points=pts,
        run_of_point=owner_arr,
        step_of_point=steps_arr,
        non_dominated=nd,
        reference=ref,
        reference_mode="auto" if reference is None else "given",
        hypervolume=hypervolume(pts, ref),
        contributions=run_contributions(pts, owner_arr, len(kept_runs), ref),
        final_index=final_index,
        final_dominance=dominance_matrix(pts[final_index]),
        skipped=skipped,
    )
