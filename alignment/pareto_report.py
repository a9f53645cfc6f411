"""`align pareto RUN_DIR... --out REPORT_DIR`: where runs landed relative to each other.

Reads run folders (their held-out evaluation files, ``eval/step-<N>.json`` written by `align evaluate` or
`align sweep`, their ``metrics.jsonl`` and ``config.yaml``) and writes into REPORT_DIR:

* ``pareto.json`` (format ``align-pareto/1``): the objectives and reference point used, every point (run, step,
  objective values, gold values, KL) with whether it is non-dominated among all points, the hypervolume of
  the front, and per run its final point, its hypervolume contribution (HV of all points minus HV without
  that run's points), the runs whose final point dominates its final point, the recipe differences between
  runs, and the run folders that were skipped and why;
* PNG plots (`alignment.report_plots`) and ``index.html`` (`alignment.report_html`), one self-contained page.

Every objective is maximised. The reference point is given (``--ref v1,v2,...``) or automatic: per objective
the minimum over all points minus 10% of the range (minus 0.1 x |min|, at least 1e-6, when all values are
equal), so that every point spans a box. Held-out "gold" objectives (a run's ``rewards.gold``, or objective
columns named with ``--gold``) are reported and plotted against KL but are not part of the front.

Bad input never stops the report: a path that is not a folder, a run folder without evaluation files, one
whose objectives differ from the report's, or one half-written by a killed run is skipped with one line each;
unreadable evaluation files and a torn last metrics line are noted. Nothing inside a run folder is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignment.errors import ConfigError, DataError

HELP = "Pareto-front report of run folders: pareto.json, PNG plots and a self-contained index.html"

REPORT_FORMAT = "align-pareto/1"
# Recipe keys that differ between any two runs by construction and say nothing about the recipe.
IGNORED_RECIPE_KEYS = ("output_dir", "source")


class SkipRun(Exception):
    """A run folder that cannot be part of the report; the message says why."""


@dataclass
class EvalPoint:
    """One evaluated checkpoint of a run: step, proxy objective means, gold objective means, KL (or None)."""

    step: int
    values: dict[str, float]
    gold: dict[str, float] = field(default_factory=dict)
    kl: float | None = None


@dataclass
class RunRecord:
    """What the report knows of one run folder.

    The training metrics are read only when first asked for (`metrics`): with many runs only those drawn as
    curves are parsed. `records` holds them once read (or as given); `metrics_path` is where they come from.
    """

    name: str
    path: Path
    objectives: list[str]
    points: list[EvalPoint]
    records: list[dict[str, Any]] | None
    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    metrics_path: Path | None = None
    metrics_gold: bool = False  # whether metrics.jsonl logs a "gold" mapping (its first line, not parsed)
    gold_columns: list[str] = field(default_factory=list)  # objective columns treated as gold (--gold)
    cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The metrics.jsonl records cut down to what the report draws (read on first use)."""
        if self.records is None:
            self.records = _read_metrics(self.metrics_path, self.notes) if self.metrics_path else []
            _move_gold_records(self.records, self.gold_columns)
        return self.records

    def series(self, section: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged quantity over training, e.g. ("objectives", "length"), ("weights",
        "length") or ("weighting", "lagrange/multiplier/length"); steps where it is missing are left out.
        Computed once per run and quantity (the plots ask for the same curves several times)."""
        key = (section, name)
        if key not in self.cache:
            if ("", "step") not in self.cache:
                steps = np.array([r["step"] for r in self.metrics], dtype=np.float64)
                self.cache[("", "step")] = (steps, steps)
            steps = self.cache[("", "step")][0]
            raw = [(r.get(section) or _EMPTY).get(name) for r in self.metrics]
            try:
                values = np.array(raw, dtype=np.float64)  # None becomes NaN
            except (TypeError, ValueError):  # a non-number somewhere: value by value
                values = np.array([_number(v) for v in raw], dtype=np.float64)
            if values.shape != steps.shape:
                values = np.array([_number(v) for v in raw], dtype=np.float64)
            keep = np.isfinite(values)
            self.cache[key] = (steps[keep], values[keep])
        return self.cache[key]

    @property
    def strategy(self) -> str:
        """The run's weighting strategy (from its recipe), or "?" when unknown."""
        return str(self.recipe.get("rewards.weighting.strategy", "?"))

    @property
    def gold_names(self) -> list[str]:
        names: list[str] = []
        for point in self.points:
            names.extend(n for n in point.gold if n not in names)
        if self.records is not None or self.metrics_gold or self.gold_columns:
            for record in self.metrics:
                names.extend(n for n in record.get("gold", {}) if n not in names)
        return names


# ----------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------


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


def parse_names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated list of names (None when `text` is None); ConfigError for an empty or repeated name."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigError(f"{option}: empty name in {text!r}; give comma-separated names such as a,b")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{option}: repeated names {repeated}")
    return names


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
    from rewards.pareto import hypervolume, hypervolume_improvement, non_dominated

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


def flatten_recipe(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe mapping as {dotted key: scalar}; lists of named mappings are keyed by their names
    (``rewards.objectives.length.weight``), other lists become one JSON value."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_recipe(value, f"{prefix}{key}."))
        if not data and prefix:
            out[prefix[:-1]] = "{}"
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) and "name" in v for v in data):
        for value in data:
            rest = {k: v for k, v in value.items() if k != "name"}
            out.update(flatten_recipe(rest, f"{prefix}{value['name']}."))
        return out
    if isinstance(data, list):
        out[prefix[:-1]] = json.dumps(data, sort_keys=True)
        return out
    out[prefix[:-1]] = data
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
            if p.kl is not None and _number(p.gold.get(name)) is not None
        ]
        source = "eval"
        if len(rows) < 2:
            rows = [
                (r["step"], r["kl"], float(r["gold"][name]), dict(r.get("objectives") or {}))
                for r in run.metrics
                if "kl" in r and _number((r.get("gold") or {}).get(name)) is not None
            ]
            source = "metrics"
        if len(rows) < 2:
            continue
        rows.sort(key=lambda row: row[0])
        gold = [row[2] for row in rows]
        proxies = {o: [_number(row[3].get(o)) for row in rows] for o in run.objectives}
        out[name] = {
            "source": source,
            "steps": [row[0] for row in rows],
            "kl": [row[1] for row in rows],
            "gold": gold,
            "proxies": proxies,
            "peak": int(np.argmax(gold)),
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading run folders (read only)
# ----------------------------------------------------------------------------------------------------------------


_EMPTY: dict[str, Any] = {}
_WEIGHTING_KEY = re.compile(r'"weighting/((?:[^"\\]|\\.)*)"\s*:')


def _yaml_load(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader


def _looks_like_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("config.yaml", "metrics.jsonl", "eval"))


def discover_runs(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Run folders from the command line: a run folder as is; a folder that is not a run but holds run folders
    (a sweep folder) is expanded to those. Returns (folders, [(path, reason skipped)])."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            skipped.append((str(raw), "not a folder" if path.exists() else "does not exist"))
            continue
        candidates = [path]
        if not _looks_like_run(path):
            children = sorted(c for c in path.iterdir() if c.is_dir() and _looks_like_run(c))
            if children:
                candidates = children
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found, skipped


def _parse_lines(lines: list[str], notes: list[str]) -> list[Any]:
    """JSON values of the lines; fast path: the whole file as one JSON array, else line by line (a torn last
    line from a killed run, or a corrupt line, is dropped with a note)."""
    try:
        return json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        pass
    values, bad = [], 0
    for number, line in enumerate(lines, start=1):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
            if number == len(lines):
                notes.append("metrics.jsonl: ignored a torn last line (run killed while writing)")
    if bad and not any("torn" in n for n in notes):
        notes.append(f"metrics.jsonl: ignored {bad} unreadable line(s)")
    return values


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The metrics.jsonl records, each cut down to what the report draws: step, objectives, weights, gold, kl,
    composite_reward and the weighting strategy's metrics (``weighting/<key>`` as ``weighting: {key: value}``)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        notes.append(f"metrics.jsonl unreadable ({err.strerror or err}): no training curves")
        return []
    lines = [line for line in text.splitlines() if line.strip()]
    weighting_keys = sorted(set(_WEIGHTING_KEY.findall(text)))  # found once per file, not per record
    records: list[dict[str, Any]] = []
    for record in _parse_lines(lines, notes):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        kept = {"step": record["step"]}
        for key in ("objectives", "weights", "gold"):
            if isinstance(record.get(key), dict):
                kept[key] = record[key]
        for key in ("kl", "composite_reward"):
            if isinstance(record.get(key), int | float):
                kept[key] = float(record[key])
        if weighting_keys:
            weighting = {k: record[f"weighting/{k}"] for k in weighting_keys if f"weighting/{k}" in record}
            if weighting:
                kept["weighting"] = weighting
        records.append(kept)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def load_run(path: Path, name: str | None = None) -> RunRecord:
    """Read one run folder (never writes to it). Raises SkipRun with the reason when it cannot be reported."""
    from alignment.evaluate import EVAL_DIR, read_eval_file

    notes: list[str] = []
    config = path / "config.yaml"
    if not config.is_file():
        raise SkipRun("no config.yaml (not a run folder, or a run killed before it started)")
    try:
        recipe = _yaml_load(config.read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 - any YAML or decoding error
        raise SkipRun(f"config.yaml is unreadable ({type(err).__name__}), half-written?") from None
    if not isinstance(recipe, dict):
        raise SkipRun("config.yaml is not a recipe mapping")
    eval_dir = path / EVAL_DIR
    files = sorted(eval_dir.glob("step-*.json")) if eval_dir.is_dir() else []
    if not files:
        raise SkipRun(f"no evaluation scores ({EVAL_DIR}/step-N.json); run `align evaluate {path}` first")
    points: list[EvalPoint] = []
    objective_sets: list[tuple[str, ...]] = []
    for file in files:
        try:
            data = read_eval_file(file)
        except DataError as err:
            notes.append(f"skipped {file.name}: {str(err).split(': ', 1)[-1]}")
            continue
        order = data.get("names") if isinstance(data.get("names"), list) else list(data["objectives"])
        order = [n for n in order if n in data["objectives"]] + [n for n in data["objectives"] if n not in order]
        values = {k: _number(data["objectives"][k].get("mean")) for k in order}
        gold = {k: _number(v.get("mean")) for k, v in (data.get("gold") or {}).items()}
        kl = data.get("kl")
        kl_value = _number(kl.get("sequence")) if isinstance(kl, dict) else _number(kl)
        points.append(EvalPoint(int(data["step"]), values, gold, kl_value))  # type: ignore[arg-type]
        objective_sets.append(tuple(values))  # in the recipe's order
    if not points:
        raise SkipRun("every evaluation file is unreadable (half-written by a killed run?)")
    final_set = objective_sets[int(np.argmax([p.step for p in points]))]
    consistent = [p for p, s in zip(points, objective_sets) if set(s) == set(final_set)]
    if len(consistent) < len(points):
        notes.append(f"ignored {len(points) - len(consistent)} evaluation(s) with other objectives")
    points = sorted(consistent, key=lambda p: p.step)
    metrics_path: Path | None = path / "metrics.jsonl"
    metrics_gold = False
    try:
        with open(metrics_path, "rb") as handle:  # type: ignore[arg-type]
            metrics_gold = b'"gold"' in handle.readline()  # a run that logs gold logs it every step
    except OSError:
        notes.append("no metrics.jsonl: no training curves")
        metrics_path = None
    return RunRecord(
        name=name or path.name,
        path=path,
        objectives=list(final_set),
        points=points,
        records=None,
        recipe=flatten_recipe(recipe),
        notes=notes,
        metrics_path=metrics_path,
        metrics_gold=metrics_gold,
    )


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    counts = Counter(names)
    out = []
    for path, name in zip(paths, names):
        out.append(name if counts[name] == 1 else f"{path.parent.name}/{name}")
    final = Counter(out)
    return [n if final[n] == 1 else f"{n}#{i}" for i, n in enumerate(out)]


def _move_gold_records(records: list[dict[str, Any]], gold: Sequence[str]) -> None:
    """Move the objective columns named in `gold` from each metrics record's "objectives" to its "gold"."""
    for record in records if gold else ():
        objectives = record.get("objectives") or {}
        moved = {n: objectives.pop(n) for n in gold if n in objectives}
        if moved:
            record["gold"] = {**record.get("gold", {}), **moved}


def _move_gold(run: RunRecord, gold: Sequence[str]) -> None:
    """Treat the objective columns named in `gold` as gold objectives of `run` (in place; metrics on read)."""
    if not gold:
        return
    for point in run.points:
        for name in gold:
            if name in point.values:
                point.gold[name] = point.values.pop(name)
    run.gold_columns = [g for g in gold if g not in run.gold_columns] + run.gold_columns
    if run.records is not None:
        _move_gold_records(run.records, gold)
    run.objectives = [o for o in run.objectives if o not in gold]
    run.cache.clear()


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


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
    from rewards.pareto import hypervolume, non_dominated

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


def report_data(analysis: Analysis, plots: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The content of pareto.json (see the module docstring)."""
    a = analysis
    names = [r.name for r in a.runs]
    final_front = ~a.final_dominance.any(axis=0)
    points = []
    for i in range(len(a.points)):
        run = a.runs[int(a.run_of_point[i])]
        step = int(a.step_of_point[i])
        point = next(p for p in run.points if p.step == step)
        points.append(
            {
                "run": run.name,
                "step": step,
                "values": dict(zip(a.objectives, a.points[i].tolist())),
                "non_dominated": bool(a.non_dominated[i]),
                "final": bool(a.final_index[int(a.run_of_point[i])] == i),
                "gold": point.gold,
                "kl": point.kl,
            }
        )
    runs = []
    for r, run in enumerate(a.runs):
        fi = int(a.final_index[r])
        final_point = next(p for p in run.points if p.step == int(a.step_of_point[fi]))
        runs.append(
            {
                "name": run.name,
                "path": str(run.path),
                "strategy": run.strategy,
                "final_step": int(a.step_of_point[fi]),
                "final": dict(zip(a.objectives, a.points[fi].tolist())),
                "final_gold": final_point.gold,
                "final_kl": final_point.kl,
                "on_front": bool(a.non_dominated[a.run_of_point == r].any()),
                "final_on_front": bool(final_front[r]),
                "hypervolume_contribution": float(a.contributions[r]),
                "dominated_by": [names[j] for j in np.flatnonzero(a.final_dominance[:, r] & final_front)],
                "dominated_by_count": int(a.final_dominance[:, r].sum()),
                "dominates_count": int(a.final_dominance[r].sum()),
                "evaluated_steps": [p.step for p in run.points],
                "gold_peak": {
                    name: {
                        "source": s["source"],
                        "step": s["steps"][s["peak"]],
                        "kl": s["kl"][s["peak"]],
                        "gold": s["gold"][s["peak"]],
                        "proxies": {o: v[s["peak"]] for o, v in s["proxies"].items()},
                    }
                    for name, s in overoptimization_series(run).items()
                },
                "notes": list(run.notes),
            }
        )
    return {
        "format": REPORT_FORMAT,
        "objectives": a.objectives,
        "gold": a.gold,
        "maximize": True,
        "reference_point": a.reference.tolist(),
        "reference": a.reference_mode,
        "hypervolume": a.hypervolume,
        "points": points,
        "runs": runs,
        "recipe_differences": recipe_differences({run.name: run.recipe for run in a.runs}),
        "skipped": [{"path": p, "reason": reason} for p, reason in a.skipped],
        "plots": plots or {},
    }


def _check_out_dir(out: Path, runs: Sequence[Path]) -> None:
    target = out.resolve()
    for run in runs:
        root = run.resolve()
        if target == root or root in target.parents:
            raise ConfigError(f"--out: {str(out)!r} is inside run folder {str(run)!r}; run folders are never written")


def build_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    reference: str = "auto",
    objectives: list[str] | None = None,
    gold: list[str] | None = None,
    steps: str = "all",
    title: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Read the run folders, write pareto.json, the plots and index.html into `out`; return pareto.json's data.

    Skipped run folders are reported through `log`, one line each. Raises DataError when no run folder is
    usable and ConfigError for a bad option.
    """
    from alignment.io import atomic_write_json, atomic_write_text

    out = Path(out)
    folders, skipped = discover_runs(paths)
    _check_out_dir(out, folders)
    gold_columns = list(gold or [])
    loaded: list[RunRecord] = []
    for folder, name in zip(folders, _unique_names(folders)):
        try:
            run = load_run(folder, name)
        except SkipRun as err:
            skipped.append((str(folder), str(err)))
            continue
        except OSError as err:
            skipped.append((str(folder), f"unreadable ({err})"))
            continue
        _move_gold(run, gold_columns)
        loaded.append(run)
    if objectives is not None:
        clash = sorted(set(objectives) & set(gold_columns))
        if clash:
            raise ConfigError(f"--objectives: {clash} are also named by --gold")
    chosen, rejected = choose_objectives(loaded, objectives, gold_columns)
    rejected_ids = {id(run) for run, _ in rejected}
    skipped.extend((str(run.path), reason) for run, reason in rejected)
    runs = [run for run in loaded if id(run) not in rejected_ids]
    if not chosen and runs:
        raise DataError("the runs have no objective left for a front (all were named by --gold)")
    ref = parse_reference(reference, len(chosen)) if chosen else None
    analysis = analyse(runs, chosen, [], ref, skipped, steps)
    for path, reason in skipped:
        log(f"skipped {path}: {reason}")
    gold_names: list[str] = []
    for run in analysis.runs:
        gold_names.extend(n for n in run.gold_names if n not in gold_names)
    analysis.gold = gold_names
    out.mkdir(parents=True, exist_ok=True)
    from alignment.report_html import render_html
    from alignment.report_plots import make_plots

    plots = make_plots(analysis, out)
    data = report_data(analysis, {k: [p.name for p in v] for k, v in plots.items()})
    for run in analysis.runs:  # after the plots: reading a run's metrics can add a note
        for note in run.notes:
            log(f"note {run.path}: {note}")
    atomic_write_json(out / "pareto.json", data)
    atomic_write_text(out / "index.html", render_html(data, plots, title=title))
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`align pareto RUN_DIR... --out REPORT_DIR [--ref auto|v1,v2,...] [--objectives a,b] [--gold g]`."""
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run folders (a sweep folder stands for the runs in it)"
    )
    parser.add_argument("--out", required=True, help="report folder (pareto.json, *.png, index.html)")
    parser.add_argument(
        "--ref", default="auto", help="reference point: 'auto' (min - 10%% of range) or v1,v2,... per objective"
    )
    parser.add_argument("--objectives", default=None, help="objectives of the front, comma-separated (default: all)")
    parser.add_argument(
        "--gold", default=None, help="objective columns to treat as held-out gold (proxy vs gold over KL), a,b"
    )
    parser.add_argument(
        "--steps", choices=("all", "final"), default="all", help="points: every evaluated step or each run's final"
    )
    parser.add_argument("--title", default=None, help="page title of index.html")


def run(args: argparse.Namespace) -> int:
    """Write the report; print where it is, the front and the hypervolume. Exit code 0."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    data = build_report(
        args.runs,
        args.out,
        reference=args.ref,
        objectives=parse_names(args.objectives, "--objectives"),
        gold=parse_names(args.gold, "--gold"),
        steps=args.steps,
        title=args.title,
        log=lambda line: print(line, file=sys.stderr),
    )
    front = [r["name"] for r in data["runs"] if r["final_on_front"]]
    print(
        f"{len(data['runs'])} runs, {len(data['points'])} points on {', '.join(data['objectives'])}; "
        f"skipped {len(data['skipped'])}"
    )
    print(f"front (final points): {', '.join(front)}")
    print(f"hypervolume {data['hypervolume']:.6g} (reference {data['reference_point']})")
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0
