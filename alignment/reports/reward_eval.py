"""Reward-model evaluation (`align eval-rm`): how well a reward (component, reward model or whole composer) ranks
preference pairs.

Report fields: pairwise accuracy (chosen scored higher; ties count half) with a 95% Wilson interval, strict
accuracy, ties, mean margin, length bias (accuracy on pairs whose chosen answer is shorter vs longer, and the
Pearson correlation of score with length in words), and for a composer of several objectives each
objective's accuracy and the correlation matrix between objectives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignment.io import atomic_write_json
from alignment.learners.factory import composer_from_spec
from alignment.recipes.preference_data import read_preference_rows
from rewards.composer import RewardComposer
from rewards.rules import text_length
from rewards.text import completion_text

COMPOSITE = "composite"


def load_preference_pairs(path: str | Path) -> list[dict[str, Any]]:
    """TRL preference rows (`prompt`, `chosen`, `rejected`; standard or conversational, explicit or implicit
    prompt) from a local file, every row checked strictly. Raises DataError naming the file and row."""
    return read_preference_rows(path, on_bad="error")[0]


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (ties counted as half successes)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
        return None
    return float(np.corrcoef(x[keep], y[keep])[0, 1])


def pairwise_stats(chosen: np.ndarray, rejected: np.ndarray, chosen_shorter: np.ndarray) -> dict[str, Any]:
    """Accuracy, ties, margin and length-split accuracy for score vectors of N pairs (NaN pairs skipped)."""
    valid = np.isfinite(chosen) & np.isfinite(rejected)
    c, r, shorter = chosen[valid], rejected[valid], chosen_shorter[valid]
    n = int(valid.sum())
    wins, ties = int((c > r).sum()), int((c == r).sum())
    accuracy = (wins + 0.5 * ties) / n if n else math.nan
    low, high = wilson_interval(wins + 0.5 * ties, n)

    def split(mask: np.ndarray) -> float | None:
        if not mask.any():
            return None
        return float(((c[mask] > r[mask]).sum() + 0.5 * (c[mask] == r[mask]).sum()) / mask.sum())

    return {
        "pairs": n,
        "skipped": int((~valid).sum()),
        "accuracy": accuracy,
        "accuracy_ci95": [low, high],
        "strict_accuracy": wins / n if n else math.nan,
        "ties": ties,
        "mean_margin": float(np.mean(c - r)) if n else math.nan,
        "accuracy_chosen_shorter": split(shorter),
        "accuracy_chosen_longer": split(~shorter),
    }


def evaluate_pairs(composer: RewardComposer, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score every chosen and rejected answer with each objective and summarise (see the module docstring)."""
    n = len(pairs)
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    extra = sorted({k for p in pairs for k in p} - {"prompt", "chosen", "rejected"})
    columns = {k: [p.get(k) for p in pairs] * 2 for k in extra}
    result = composer.score(prompts, answers, **columns)
    matrix = result.matrix
    composite = composer.compose(matrix, group_size=1).rewards if len(composer.names) > 1 else matrix[:, 0]
    lengths = np.array([text_length(completion_text(a), "words") for a in answers], dtype=np.float64)
    chosen_shorter = lengths[:n] < lengths[n:]
    main_name = COMPOSITE if len(composer.names) > 1 else composer.names[0]
    report: dict[str, Any] = {"reward": main_name, **pairwise_stats(composite[:n], composite[n:], chosen_shorter)}
    report["length_score_correlation"] = _pearson(composite, lengths)
    report["failures"] = result.failures
    if len(composer.names) > 1:
        report["weights"] = dict(zip(composer.names, composer.weighting.weights().tolist()))
        report["objectives"] = {
            name: {
                **pairwise_stats(matrix[:n, k], matrix[n:, k], chosen_shorter),
                "length_score_correlation": _pearson(matrix[:, k], lengths),
            }
            for k, name in enumerate(composer.names)
        }
        report["correlation"] = {
            a: {b: _pearson(matrix[:, i], matrix[:, j]) for j, b in enumerate(composer.names)}
            for i, a in enumerate(composer.names)
        }
    return report


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(report: dict[str, Any]) -> str:
    """A short fixed-width table of the report for stdout."""
    header = (
        f"{'reward':<20} {'pairs':>6} {'acc':>6} {'ci95':>13} {'ties':>5} {'margin':>8} {'acc|short':>9} "
        f"{'acc|long':>9}"
    )
    rows = [(report["reward"], report)] + list(report.get("objectives", {}).items())
    lines = [header, "-" * len(header)]
    for name, stats in rows:
        low, high = stats["accuracy_ci95"]
        lines.append(
            f"{name:<20} {stats['pairs']:>6} {_fmt(stats['accuracy']):>6} "
            f"{'[' + _fmt(low) + ',' + _fmt(high) + ']':>13} {stats['ties']:>5} {_fmt(stats['mean_margin']):>8} "
            f"{_fmt(stats['accuracy_chosen_shorter']):>9} {_fmt(stats['accuracy_chosen_longer']):>9}"
        )
    lines.append(f"length-score correlation ({report['reward']}): {_fmt(report['length_score_correlation'])}")
    return "\n".join(lines)


def run_eval_rm(spec: str, data: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate SPEC on the pairs in `data`, write the JSON report atomically to `out`, return it.

    `out` is checked first (`alignment.outputs.check_output_file`): ConfigError when it is a folder, lies inside a
    run folder or checkpoint or under a file or unwritable folder, or already exists (unless `overwrite`)."""
    from alignment.outputs import check_output_file

    check_output_file(out, "--out", overwrite=overwrite)
    composer = composer_from_spec(spec)
    pairs = load_preference_pairs(data)
    report = evaluate_pairs(composer, pairs)
    report["data"] = str(data)
    report["spec"] = spec
    atomic_write_json(out, report)
    return report
