"""The Pareto report (`align pareto RUN_DIR... --out REPORT_DIR`): where runs landed relative to each other.

Reads run folders (their held-out evaluation files, ``eval/step-<N>.json`` written by `align evaluate` or
`align sweep`, their ``metrics.jsonl`` and ``config.yaml``) and writes into REPORT_DIR:

* ``pareto.json`` (format ``align-pareto/1``): the objectives and reference point used, every point (run, step,
  objective values, gold values, KL) with whether it is non-dominated among all points, the hypervolume of
  the front, and per run its final point, its hypervolume contribution (HV of all points minus HV without
  that run's points), the runs whose final point dominates its final point, the recipe differences between
  runs, and the run folders that were skipped and why;
* PNG plots (`alignment.reports.plots`) and ``index.html`` (`alignment.reports.html`), one self-contained page.

Data flows one way: run folders (`reports.runs`) -> numbers (`reports.analysis`) -> views (`reports.plots`,
`reports.html`) and pareto.json (here).

Every objective is maximised. The reference point is given (``--ref v1,v2,...``) or automatic: per objective
the minimum over all points minus 10% of the range (minus 0.1 x |min|, at least 1e-6, when all values are
equal), so that every point spans a box. Held-out "gold" objectives (a run's ``rewards.gold``, or objective
columns named with ``--gold``) are reported and plotted against KL but are not part of the front.

Bad input never stops the report: a path that is not a folder, a run folder without evaluation files, one
whose objectives differ from the report's, or one half-written by a killed run is skipped with one line each;
unreadable evaluation files and a torn last metrics line are noted. Nothing inside a run folder is written:
REPORT_DIR is refused (one line, before anything is read or written) when it is or lies inside any run folder
or checkpoint (named on the command line or not, marked or only looking like one), names a file, lies under a
file or an unwritable folder, or is an existing folder that is neither empty nor an earlier report (its
``align-folder.json`` marker says "report"); see `alignment.outputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignment.errors import ConfigError, DataError
from alignment.io import atomic_write_json, atomic_write_text
from alignment.outputs import check_report_folder, claim_folder
from alignment.reports.analysis import (
    Analysis,
    analyse,
    choose_objectives,
    overoptimization_series,
    parse_reference,
    recipe_differences,
)
from alignment.reports.html import render_html
from alignment.reports.plots import make_plots
from alignment.reports.runs import RunRecord, SkipRun, discover_runs, load_run, move_gold, unique_names

REPORT_FORMAT = "align-pareto/1"


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
    out = Path(out)
    check_report_folder(out, "--out")
    folders, skipped = discover_runs(paths)
    _check_out_dir(out, folders)
    gold_columns = list(gold or [])
    loaded: list[RunRecord] = []
    for folder, name in zip(folders, unique_names(folders)):
        try:
            run = load_run(folder, name)
        except SkipRun as err:
            skipped.append((str(folder), str(err)))
            continue
        except OSError as err:
            skipped.append((str(folder), f"unreadable ({err})"))
            continue
        move_gold(run, gold_columns)
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
    claim_folder(out, "report")
    plots = make_plots(analysis, out)
    data = report_data(analysis, {k: [p.name for p in v] for k, v in plots.items()})
    for run in analysis.runs:  # after the plots: reading a run's metrics can add a note
        for note in run.notes:
            log(f"note {run.path}: {note}")
    atomic_write_json(out / "pareto.json", data)
    atomic_write_text(out / "index.html", render_html(data, plots, title=title))
    return data
