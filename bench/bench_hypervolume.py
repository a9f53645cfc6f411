"""Timings of rewards.pareto (on moocore) against the project's former home-made code, now the test oracle.

Usage: ``python bench/bench_hypervolume.py [--out bench/results/hypervolume.json] [--seed 0] [--repeats 3]``

Points are drawn on the positive orthant of the unit sphere and pushed inwards by up to 1% (so most, but not
all, are non-dominated), reference point at the origin. Each case runs both implementations on the same points
``--repeats`` times; the best time of each is reported, with the speed-up and the largest difference between
their results (relative to the hypervolume for volumes). Writes JSON ({"cases": [{name, n, k, front, moocore_s,
oracle_s, speedup, max_rel_diff, target, pass}, ...], ...}) and prints a table; exits 0 whatever the timings
(this is a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import moocore
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pareto_oracle  # noqa: E402

import rewards.pareto  # noqa: E402

# (function, n, k, target seconds for rewards.pareto)
CASES: list[tuple[str, int, int, float]] = [
    ("hypervolume", 100_000, 2, 0.1),
    ("hypervolume", 10_000, 3, 1.0),
    ("hypervolume", 1_000, 4, 1.0),
    ("hypervolume", 300, 5, 1.0),
    ("non_dominated", 10_000, 3, 0.5),
    ("non_dominated", 10_000, 4, 1.0),
    ("hypervolume_contributions", 10_000, 2, 0.1),
    ("hypervolume_contributions", 500, 3, 1.0),
    ("hypervolume_contributions", 200, 4, 1.0),
]


def near_front(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """[n, k] points on the unit sphere's positive orthant, each scaled by a factor in [0.99, 1]."""
    x = np.abs(rng.standard_normal((n, k)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x * rng.uniform(0.99, 1.0, size=(n, 1))


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls of ``fn`` and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def call(impl: ModuleType, func: str, pts: np.ndarray, ref: np.ndarray) -> Callable[[], object]:
    if func == "non_dominated":
        return lambda: impl.non_dominated(pts)
    return lambda: getattr(impl, func)(pts, ref)


def difference(func: str, ours: object, theirs: object, volume: float) -> float:
    """Largest difference between the two results: mismatching flags for masks, relative to HV for volumes."""
    if func == "non_dominated":
        return float(np.count_nonzero(np.asarray(ours) != np.asarray(theirs)))
    return float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs)))) / max(volume, 1e-300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/hypervolume.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    results = []
    for func, n, k, target in CASES:
        pts = near_front(rng, n, k)
        ref = np.zeros(k)
        fast_s, ours = timed(call(rewards.pareto, func, pts, ref), args.repeats)
        oracle_s, theirs = timed(call(pareto_oracle, func, pts, ref), args.repeats)
        volume = rewards.pareto.hypervolume(pts, ref)
        results.append(
            {
                "name": func,
                "n": n,
                "k": k,
                "front": int(rewards.pareto.non_dominated(pts).sum()),
                "moocore_s": fast_s,
                "oracle_s": oracle_s,
                "speedup": oracle_s / fast_s,
                "max_rel_diff": difference(func, ours, theirs, volume),
                "target": target,
                "pass": fast_s < target,
            }
        )

    report = {
        "cases": results,
        "repeats": args.repeats,
        "seed": args.seed,
        "moocore": moocore.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'case':<27} {'n':>7} {'k':>2} {'front':>6} {'moocore s':>10} {'oracle s':>9} {'x':>7} {'diff':>8}  ok")
    for r in results:
        ok = "yes" if r["pass"] else "NO"
        print(
            f"{r['name']:<27} {r['n']:>7} {r['k']:>2} {r['front']:>6} {r['moocore_s']:>10.4f} {r['oracle_s']:>9.4f} "
            f"{r['speedup']:>7.1f} {r['max_rel_diff']:>8.1e}  {ok}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
