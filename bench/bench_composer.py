"""Composer overhead per training step, for every weighting strategy: 512 completions x 4 objectives.

Usage: ``python bench/bench_composer.py [--out bench/results/composer.json] [--n 512] [--group 8] [--repeats 200]``

Overhead is everything the composer adds around the components' own calls: `score` with components that
return precomputed values (NaN handling, conversion, failure counting), length masking (one objective with a
BalCapRL condition against a reference column, ~150-word completions), `compose` and `update`. Dynamic
strategies are first run for 200 steps on batches whose means move outwards in random directions, so their
state is realistic and the hypervolume case is hard (a Pareto buffer of many mutually non-dominated points,
reported as hv/buffer_size; moving multipliers); the gradient strategy gets a [K, K] Gram matrix every step.
Each phase is timed ``--repeats`` times and the median is reported; the target is a total under 5 ms. Writes
JSON and prints a table; exits 0 whatever the timings (a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.composer import Objective, RewardComposer  # noqa: E402
from rewards.masking import LengthCondition  # noqa: E402
from rewards.weighting import build_weighting  # noqa: E402

TARGET_SECONDS = 0.005
NAMES = ["quality", "accuracy", "length", "format"]


class Precomputed:
    """A component whose own cost is nil: it returns the next precomputed column."""

    def __init__(self, name: str, values: list[float]) -> None:
        self.name, self.values = name, values

    def __call__(self, prompts: Any, completions: Any, **columns: Any) -> list[float]:
        return self.values


def strategies(k: int) -> dict[str, dict[str, Any]]:
    return {
        "static": {"weights": [1.0] * k},
        "hypervolume": {"weights": [1.0] * k},
        "hypervolume_rewards": {"weights": [1.0] * k, "placement": "rewards"},
        "gradient": {"weights": [1.0] * k},
        "lagrangian": {
            "base": NAMES[1],
            "constraints": [
                {"objective": NAMES[0], "threshold": 0.5, "direction": "lower"},
                {"objective": NAMES[2], "threshold": 0.2, "direction": "upper"},
            ],
        },
        "lagrangian_safe_rlhf": {
            "base": NAMES[1],
            "form": "safe_rlhf",
            "constraints": [{"objective": NAMES[2], "threshold": 0.2, "direction": "upper"}],
        },
    }


def drift(rng: np.random.Generator, step: int, k: int) -> np.ndarray:
    """[1, k] shift of step `step`: the batch means move outwards (0.02 per step) in a random positive direction,
    so successive means trade objectives against each other and the Pareto buffer keeps many points."""
    u = np.abs(rng.normal(size=(1, k)))
    return 0.02 * step * u / np.linalg.norm(u)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/composer.json"))
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    n, g, k = args.n, args.group, len(NAMES)
    vocab = [f"w{i}" for i in range(500)]
    completions = [" ".join(rng.choice(vocab, size=int(rng.integers(60, 240)))) for _ in range(n)]
    references = [ref for ref in (" ".join(rng.choice(vocab, size=120)) for _ in range(n // g)) for _ in range(g)]
    prompts = [f"prompt {i // g}" for i in range(n)]
    matrix = rng.normal(size=(n, k))
    matrix[rng.random(size=matrix.shape) < 0.02] = np.nan
    columns = {"reference": references}
    masks = {NAMES[0]: LengthCondition(unit="words", reference="reference")}

    cases = []
    for name, options in strategies(k).items():
        kind = name.split("_")[0]
        weighting = build_weighting(kind, k, NAMES, **options)
        objectives = [Objective(nm, Precomputed(nm, matrix[:, j].tolist())) for j, nm in enumerate(NAMES)]
        composer = RewardComposer(objectives, weighting, "group", masks=masks)
        gram = np.eye(k) + 0.1
        for step in range(args.warmup_steps):
            composer.compose(matrix, g)
            composer.update(matrix + drift(rng, step, k), step=step, gram=gram)
        step_box = [args.warmup_steps]

        def update(composer: RewardComposer = composer, gram: np.ndarray = gram, box: list[int] = step_box) -> None:
            composer.update(matrix + drift(rng, box[0], k), step=box[0], gram=gram)
            box[0] += 1

        score = median_time(lambda c=composer: c.score(prompts, completions, **columns), args.repeats)
        masking = median_time(lambda c=composer: c.apply_masks(matrix, completions, columns), args.repeats)
        compose = median_time(lambda c=composer: c.compose(matrix, g), args.repeats)
        upd = median_time(update, args.repeats)
        total = score + compose + upd  # score includes the masking
        cases.append(
            {
                "strategy": name,
                "n": n,
                "k": k,
                "group_size": g,
                "score_seconds": score,
                "masking_seconds": masking,
                "compose_seconds": compose,
                "update_seconds": upd,
                "total_seconds": total,
                "target": TARGET_SECONDS,
                "pass": total < TARGET_SECONDS,
                "state": {key: v for key, v in composer.compose(matrix, g).metrics.items() if "buffer" in key},
            }
        )

    result = {
        "cases": cases,
        "repeats": args.repeats,
        "warmup_steps": args.warmup_steps,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "note": "score = components returning precomputed values + masking; medians in seconds",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    header = f"{'strategy':<22}{'score+mask':>12}{'(mask)':>10}{'compose':>10}{'update':>10}{'total':>10}  target"
    print(header)
    print("-" * len(header))
    for c in cases:
        print(
            f"{c['strategy']:<22}{c['score_seconds'] * 1e3:>10.3f}ms{c['masking_seconds'] * 1e3:>8.3f}ms"
            f"{c['compose_seconds'] * 1e3:>8.3f}ms{c['update_seconds'] * 1e3:>8.3f}ms"
            f"{c['total_seconds'] * 1e3:>8.3f}ms  {'ok' if c['pass'] else 'SLOW'} (< {TARGET_SECONDS * 1e3:.0f} ms)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
