"""Timings of rewards.pareto on random near-non-dominated sets.

Usage: ``python bench/bench_hypervolume.py [--out bench/results/hypervolume.json] [--seed 0] [--repeats 3]``

Points are drawn on the positive orthant of the unit sphere and pushed inwards by up to 1% (so most, but not
all, are non-dominated), reference point at the origin. Each case is timed ``--repeats`` times and the best
time is reported against its target. Writes JSON ({"cases": [{name, n, k, seconds, target, pass}, ...], ...})
and prints a table; exits 0 whatever the timings (this is a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.pareto import hypervolume, hypervolume_contributions, non_dominated  # noqa: E402

# (name, function, n, k, target seconds)
CASES: list[tuple[str, str, int, int, float]] = [
    ("hypervolume", "hypervolume", 100_000, 2, 0.1),
    ("hypervolume", "hypervolume", 10_000, 3, 1.0),
    ("hypervolume", "hypervolume", 1_000, 4, 1.0),
    ("hypervolume", "hypervolume", 200, 5, 1.0),
    ("non_dominated", "non_dominated", 10_000, 3, 0.5),
    ("non_dominated", "non_dominated", 10_000, 4, 1.0),
    ("hypervolume_contributions", "hypervolume_contributions", 10_000, 2, 0.1),
    ("hypervolume_contributions", "hypervolume_contributions", 500, 3, 1.0),
]


def near_front(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """[n, k] points on the unit sphere's positive orthant, each scaled by a factor in [0.99, 1]."""
    x = np.abs(rng.standard_normal((n, k)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x * rng.uniform(0.99, 1.0, size=(n, 1))


def best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/hypervolume.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    results = []
    for name, func, n, k, target in CASES:
        pts = near_front(rng, n, k)
        ref = np.zeros(k)
        if func == "hypervolume":
            call = lambda pts=pts, ref=ref: hypervolume(pts, ref)  # noqa: E731
        elif func == "hypervolume_contributions":
            call = lambda pts=pts, ref=ref: hypervolume_contributions(pts, ref)  # noqa: E731
        else:
            call = lambda pts=pts: non_dominated(pts)  # noqa: E731
        front = int(non_dominated(pts).sum())
        seconds = best_of(call, args.repeats)
        results.append(
            {
                "name": name,
                "n": n,
                "k": k,
                "front": front,
                "seconds": seconds,
                "target": target,
                "pass": seconds < target,
            }
        )

    report = {
        "cases": results,
        "repeats": args.repeats,
        "seed": args.seed,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'case':<27} {'n':>7} {'k':>2} {'front':>7} {'best s':>9} {'target':>7}  ok")
    for r in results:
        ok = "yes" if r["pass"] else "NO"
        print(f"{r['name']:<27} {r['n']:>7} {r['k']:>2} {r['front']:>7} {r['seconds']:>9.4f} {r['target']:>7.2f}  {ok}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
