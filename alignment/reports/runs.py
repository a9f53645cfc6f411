"""Reading run folders for the reports (read only): discovery (a sweep folder stands for its runs), each run's
evaluation points (``eval/step-<N>.json``), its training metrics (parsed lazily, torn lines noted) and its recipe.
A folder that cannot be reported raises SkipRun with the reason.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignment.errors import DataError, UserInputError
from alignment.reports.checkpoint_eval import EVAL_DIR, read_eval_file


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
                values = np.array([finite_number(v) for v in raw], dtype=np.float64)
            if values.shape != steps.shape:
                values = np.array([finite_number(v) for v in raw], dtype=np.float64)
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


_EMPTY: dict[str, Any] = {}
_WEIGHTING_KEY = re.compile(r'"weighting/((?:[^"\\]|\\.)*)"\s*:')


def _read_config(path: Path) -> Any:
    """A run's config.yaml through the project's one YAML loader (bounded, duplicate keys refused)."""
    from alignment.recipes.yaml_loading import read_yaml_file

    return read_yaml_file(path, "config.yaml")


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


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def load_run(path: Path, name: str | None = None) -> RunRecord:
    """Read one run folder (never writes to it). Raises SkipRun with the reason when it cannot be reported."""
    notes: list[str] = []
    config = path / "config.yaml"
    if not config.is_file():
        raise SkipRun("no config.yaml (not a run folder, or a run killed before it started)")
    try:
        recipe = _read_config(config)
    except UserInputError as err:  # not YAML, not UTF-8, over the loader's limits: the loader says which
        raise SkipRun(f"{err}; half-written?" if "not valid YAML" in str(err) else str(err)) from None
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
        values = {k: finite_number(data["objectives"][k].get("mean")) for k in order}
        gold = {k: finite_number(v.get("mean")) for k, v in (data.get("gold") or {}).items()}
        kl = data.get("kl")
        kl_value = finite_number(kl.get("sequence")) if isinstance(kl, dict) else finite_number(kl)
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


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Display names of run folders: the folder name, with its parent (or an index) where names repeat."""
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


def move_gold(run: RunRecord, gold: Sequence[str]) -> None:
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
