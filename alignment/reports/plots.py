"""PNG plots of the Pareto report (matplotlib, Agg backend; nothing is shown on screen).

`make_plots(analysis, out_dir)` writes, as far as the runs have the data:

* ``front_<a>_vs_<b>.png`` - the 2-D front of every pair of objectives (one file for K = 2): every evaluated
  point, each run's final point, the K-D non-dominated points ringed, the pair's own 2-D staircase and the
  reference point;
* ``trajectories.png`` - each run's path through objective space over training steps (metrics.jsonl means,
  moving-averaged; evaluated checkpoints marked), one panel per pair of objectives (at most 6);
* ``rewards.png`` - per-objective (and gold) reward curves over steps;
* ``weights.png`` - the weights and the weighting strategies' multipliers / meta-factors / influences;
* ``overoptimization.png`` - for runs with a held-out gold objective: gold and proxy over KL from the
  reference, and gold against each proxy (Constrained RLHF's proxy-point picture), the gold peak starred.

Many runs are drawn as line collections; above 10 runs colours stand for weighting strategies, not runs.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from alignment.reports.analysis import Analysis, moving_average, overoptimization_series  # noqa: E402
from alignment.reports.runs import RunRecord  # noqa: E402
from rewards.pareto import non_dominated  # noqa: E402

STRATEGY_COLORS = {"static": "tab:blue", "hypervolume": "tab:orange", "gradient": "tab:green", "lagrangian": "tab:red"}
MAX_RUN_COLORS = 10
MAX_LABELS = 15
MAX_PAIR_PANELS = 6
MAX_CURVES = 200  # training curves drawn per panel at most (see curve_runs)
DPI = 96
# Weighting metrics worth a curve (weights are always drawn): multipliers, meta-factors and influences.
WEIGHTING_KEYS = re.compile(r"(multiplier|meta_factor|base_factor|influence)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def run_colors(runs: Sequence[RunRecord]) -> tuple[list[Any], list[tuple[str, Any]]]:
    """A colour per run and the legend entries: per run up to MAX_RUN_COLORS runs, else per strategy."""
    if len(runs) <= MAX_RUN_COLORS:
        cmap = plt.get_cmap("tab10")
        colors = [tuple(cmap(i % 10)) for i in range(len(runs))]
        return colors, [(run.name, c) for run, c in zip(runs, colors)]
    palette = {s: to_rgba(c) for s, c in STRATEGY_COLORS.items()}
    colors = [palette.get(run.strategy, to_rgba("tab:gray")) for run in runs]
    seen: dict[str, Any] = {}
    for run, color in zip(runs, colors):
        seen.setdefault(run.strategy, color)
    return colors, list(seen.items())


def curve_runs(analysis: Analysis) -> tuple[list[tuple[RunRecord, Any]], str]:
    """The runs drawn as training curves, with their colours, and a note for the title.

    Up to MAX_CURVES runs all; above, every run with a final point on the front plus an even sample of the
    others, MAX_CURVES in all (a thousand curves in one panel show nothing, and their metrics need not be read).
    """
    a = analysis
    colors, _ = run_colors(a.runs)
    n = len(a.runs)
    if n <= MAX_CURVES:
        return list(zip(a.runs, colors)), ""
    final_front = ~a.final_dominance.any(axis=0)
    front = [i for i in range(n) if final_front[i]]
    others = [i for i in range(n) if not final_front[i]]
    if len(front) >= MAX_CURVES:
        chosen = sorted({front[int(k)] for k in np.linspace(0, len(front) - 1, MAX_CURVES)})
        note = f" - {len(chosen)} of {n} runs: an even sample of the {len(front)} on the front"
    else:
        room = MAX_CURVES - len(front)
        sample = [others[int(k)] for k in np.linspace(0, len(others) - 1, room)] if others else []
        chosen = sorted(set(front) | set(sample))
        note = f" - {len(chosen)} of {n} runs: the {len(front)} on the front and an even sample of the rest"
    return [(a.runs[i], colors[i]) for i in chosen], note


def _legend(fig: Any, entries: list[tuple[str, Any]]) -> None:
    """A legend of coloured entries in the figure's right margin (see `_grid`)."""
    handles = [Line2D([0], [0], color=c, marker="o", linewidth=1.5, label=label) for label, c in entries]
    if handles:
        fig.legend(handles=handles, fontsize=7, loc="upper right", bbox_to_anchor=(0.995, 0.93), framealpha=0.8)


def _grid(
    panels: int, width: float, height: float, cols: int = 3, legend: float = 2.0, gap: float = 0.8
) -> tuple[Any, list[Any]]:
    """A figure of `panels` axes (width x height inches each) in rows of at most `cols`, with fixed margins in
    inches and `legend` inches on the right for the legend. A fixed layout: no constrained/tight layout pass,
    which would draw every figure twice (slow with many runs)."""
    cols = max(1, min(cols, panels))
    rows = (panels + cols - 1) // cols
    left, right, top, bottom = 0.75, legend + 0.15, 0.65, 0.6
    fig_w = left + right + cols * width + (cols - 1) * gap
    fig_h = top + bottom + rows * height + (rows - 1) * 0.75
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(
        left=left / fig_w,
        right=1 - right / fig_w,
        top=1 - top / fig_h,
        bottom=bottom / fig_h,
        wspace=gap / width,
        hspace=0.75 / height,
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.axis("off")
    return fig, flat[:panels]


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI)  # constrained layout already fits the labels; no second "tight" draw
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _pairs(k: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(k), 2))


def staircase(points: np.ndarray) -> np.ndarray:
    """The 2-D non-dominated points [m, 2] of points [n, 2] sorted by the first objective ascending (the
    second then descends): the front's staircase, all objectives maximised."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) == 0:
        return pts.reshape(0, 2)
    front = np.unique(pts[non_dominated(pts)], axis=0)
    return front[np.argsort(front[:, 0], kind="stable")]


def staircase_outline(stairs: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outline (x, y) of the region a 2-D staircase [m, 2] (x ascending, y descending) dominates above
    `ref` [2]: from (ref_x, y_1) across to (x_1, y_1), down to y_2, across to x_2, ..., down to ref_y."""
    xs, ys = [float(ref[0])], [float(stairs[0, 1])]
    for k, (x, y) in enumerate(stairs.tolist()):
        below = stairs[k + 1, 1] if k + 1 < len(stairs) else ref[1]
        xs += [x, x]
        ys += [y, float(below)]
    return np.asarray(xs), np.asarray(ys)


def plot_fronts(analysis: Analysis, out_dir: Path) -> list[Path]:
    """One PNG per pair of objectives: points, final points, K-D front, the pair's staircase, reference."""
    a = analysis
    colors, legend = run_colors(a.runs)
    paths = []
    for i, j in _pairs(len(a.objectives)):
        fig, (ax,) = _grid(1, 5.2, 4.0, legend=2.3)
        xy = a.points[:, [i, j]]
        ax.scatter(xy[:, 0], xy[:, 1], s=10, color="0.7", label="evaluated checkpoints", zorder=1)
        stairs = staircase(xy)
        if len(stairs):
            ref = a.reference[[i, j]]
            sx, sy = staircase_outline(stairs, ref)
            ax.plot(sx, sy, color="0.35", linestyle="--", linewidth=1, zorder=2)
            ax.plot(*ref, marker="x", color="0.35", linestyle="none", zorder=2)
            ax.annotate("reference", ref, fontsize=7, color="0.35", xytext=(3, 3), textcoords="offset points")
        finals = a.points[a.final_index][:, [i, j]]
        ax.scatter(finals[:, 0], finals[:, 1], s=36, c=colors, zorder=3, edgecolors="white", linewidths=0.5)
        nd = xy[a.non_dominated]
        ax.scatter(nd[:, 0], nd[:, 1], s=90, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
        if len(a.runs) <= MAX_LABELS:
            for run, (x, y) in zip(a.runs, finals):
                ax.annotate(run.name, (x, y), fontsize=7, xytext=(4, -9), textcoords="offset points")
        ax.set_xlabel(a.objectives[i])
        ax.set_ylabel(a.objectives[j])
        ax.set_title(f"Pareto front: {a.objectives[i]} vs {a.objectives[j]} (both maximised)", fontsize=10)
        entries = legend + [("non-dominated (all objectives)", "black")]
        _legend(fig, entries)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out_dir / f"front_{_slug(a.objectives[i])}_vs_{_slug(a.objectives[j])}.png"))
    return paths


def _curve(run: RunRecord, section: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    return run.series(section, name)


def _smoothed(run: RunRecord, section: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, moving average of the values) of a logged quantity, cached on the run."""
    key = (f"smoothed:{section}", name)
    if key not in run.cache:
        steps, values = run.series(section, name)
        run.cache[key] = (steps, moving_average(values, _window(len(values))))
    return run.cache[key]


def _window(n: int) -> int:
    return max(1, n // 10)


def _draw_lines(ax: Any, lines: list[np.ndarray], colors: list[Any], **kwargs: Any) -> None:
    if lines:
        ax.add_collection(LineCollection(lines, colors=np.asarray(colors, dtype=np.float64), **kwargs))
        ax.autoscale_view()


def plot_trajectories(analysis: Analysis, out_dir: Path) -> Path | None:
    """Each run's path through objective space over training steps, one panel per pair of objectives."""
    a = analysis
    pairs = _pairs(len(a.objectives))[:MAX_PAIR_PANELS]
    if not pairs:
        return None
    _, legend = run_colors(a.runs)
    shown, note = curve_runs(a)
    fig, axes = _grid(len(pairs), 4.4, 3.8)
    many = len(a.runs) > MAX_RUN_COLORS
    for panel, (i, j) in enumerate(pairs):
        ax = axes[panel]
        lines, line_colors, starts, ends = [], [], [], []
        for run, color in shown:
            sx, x = _smoothed(run, "objectives", a.objectives[i])
            sy, y = _smoothed(run, "objectives", a.objectives[j])
            if len(x) >= 2 and len(x) == len(y) and np.array_equal(sx, sy):
                path = np.column_stack([x, y])
            else:  # no training curve: the evaluated checkpoints in order
                path = np.array(
                    [
                        [p.values.get(a.objectives[i], np.nan), p.values.get(a.objectives[j], np.nan)]
                        for p in run.points
                    ],
                    dtype=np.float64,
                )
            path = path[np.all(np.isfinite(path), axis=1)]
            if len(path) == 0:
                continue
            lines.append(path)
            line_colors.append(color)
            starts.append((path[0], color))
            ends.append((path[-1], color))
        _draw_lines(ax, lines, line_colors, linewidths=0.8 if many else 1.6, alpha=0.5 if many else 0.9)
        if starts:
            ax.scatter(
                [p[0] for p, _ in starts],
                [p[1] for p, _ in starts],
                s=14,
                c=[c for _, c in starts],
                marker="o",
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
            ax.scatter(
                [p[0] for p, _ in ends],
                [p[1] for p, _ in ends],
                s=70,
                c=[c for _, c in ends],
                marker="*",
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
        evals = np.array(
            [
                [p.values[a.objectives[i]], p.values[a.objectives[j]]]
                for run, _ in shown
                for p in run.points
                if a.objectives[i] in p.values and a.objectives[j] in p.values
            ]
        )
        evals = evals.reshape(-1, 2)
        ax.scatter(
            evals[:, 0], evals[:, 1], s=18, marker="s", facecolors="none", edgecolors="0.3", linewidths=0.7, zorder=2
        )
        ax.set_xlabel(a.objectives[i])
        ax.set_ylabel(a.objectives[j])
        ax.grid(alpha=0.3)
        if panel == 0:
            _legend(fig, legend + [("start (o), end (*)", "0.3")])
    fig.suptitle(f"Trajectories through objective space (training means, moving average; squares: evaluations){note}",
                 fontsize=10)  # fmt: skip
    return _save(fig, out_dir / "trajectories.png")


def plot_reward_curves(analysis: Analysis, out_dir: Path) -> Path | None:
    """Per-objective (then per-gold-objective) reward over training steps: training means (moving average)
    and held-out evaluations (markers)."""
    a = analysis
    names = [(n, "objectives") for n in a.objectives] + [(n, "gold") for n in a.gold]
    if not names:
        return None
    _, legend = run_colors(a.runs)
    shown, note = curve_runs(a)
    fig, axes = _grid(len(names), 4.4, 3.0)
    many = len(a.runs) > MAX_RUN_COLORS
    for panel, (name, section) in enumerate(names):
        ax = axes[panel]
        lines, line_colors = [], []
        ex, ey, ec = [], [], []
        for run, color in shown:
            steps, smooth = _smoothed(run, section, name)
            if len(steps) >= 1:
                lines.append(np.column_stack([steps, smooth]))
                line_colors.append(color)
            for point in run.points:
                value = (point.values if section == "objectives" else point.gold).get(name)
                if value is not None:
                    ex.append(point.step)
                    ey.append(value)
                    ec.append(color)
        _draw_lines(ax, lines, line_colors, linewidths=0.8 if many else 1.5, alpha=0.5 if many else 0.9)
        if ex:
            ax.scatter(ex, ey, c=ec, s=22, marker="s", edgecolors="black", linewidths=0.4, zorder=3)
        ax.set_title(f"{name}" + (" (gold, held out)" if section == "gold" else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel == 0:
            _legend(fig, legend)
    fig.suptitle(f"Reward per objective (lines: training means, moving average; squares: held-out evaluation){note}",
                 fontsize=10)  # fmt: skip
    return _save(fig, out_dir / "rewards.png")


def plot_weight_curves(analysis: Analysis, out_dir: Path) -> Path | None:
    """The objectives' weights and the strategies' multipliers / meta-factors / influences over steps."""
    a = analysis
    shown, note = curve_runs(a)
    found: dict[tuple[str, str], None] = {}  # insertion-ordered set
    for run, _ in shown:
        for record in run.metrics:
            for section in ("weights", "weighting"):
                for name in record.get(section) or ():
                    found[(section, name)] = None
    order = {name: i for i, name in enumerate(a.objectives)}
    keys = sorted((k for k in found if k[0] == "weights"), key=lambda k: order.get(k[1], len(order)))
    keys += [k for k in found if k[0] == "weighting" and WEIGHTING_KEYS.search(k[1])]
    if not keys:
        return None
    _, legend = run_colors(a.runs)
    fig, axes = _grid(len(keys), 4.4, 2.6)
    many = len(a.runs) > MAX_RUN_COLORS
    for panel, (section, name) in enumerate(keys):
        ax = axes[panel]
        lines, line_colors = [], []
        for run, color in shown:
            steps, values = _curve(run, section, name)
            if len(steps):
                lines.append(np.column_stack([steps, values]))
                line_colors.append(color)
        _draw_lines(ax, lines, line_colors, linewidths=0.8 if many else 1.5, alpha=0.5 if many else 0.9)
        ax.set_title(f"weight: {name}" if section == "weights" else name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel == 0:
            _legend(fig, legend)
    fig.suptitle(f"Weights and multipliers over training{note}", fontsize=10)
    return _save(fig, out_dir / "weights.png")


def plot_overoptimization(analysis: Analysis, out_dir: Path) -> Path | None:
    """For runs with a gold objective: gold and proxies over KL, and gold against each proxy; gold peak starred."""
    a = analysis
    shown, note = curve_runs(a)
    series = {run.name: overoptimization_series(run) for run, _ in shown}
    gold_names: list[str] = []
    for per_run in series.values():
        gold_names.extend(n for n in per_run if n not in gold_names)
    if not gold_names:
        return None
    runs = [run for run, _ in shown if series[run.name]]
    colors, legend = run_colors(runs)
    cols = 1 + len(a.objectives)
    fig, flat = _grid(len(gold_names) * cols, 4.0, 3.2, cols=cols, gap=1.2)
    axes = [flat[row * cols : (row + 1) * cols] for row in range(len(gold_names))]
    for row, gold in enumerate(gold_names):
        ax_kl = axes[row][0]
        ax_proxy = ax_kl.twinx()
        for run, color in zip(runs, colors):
            s = series[run.name].get(gold)
            if s is None:
                continue
            kl, values, peak = np.asarray(s["kl"], dtype=float), np.asarray(s["gold"], dtype=float), s["peak"]
            ax_kl.plot(kl, values, color=color, marker="o", markersize=3, linewidth=1.5)
            ax_kl.plot(kl[peak], values[peak], marker="*", markersize=14, color=color, markeredgecolor="black")
            for style, objective in zip(("--", ":", "-."), a.objectives):
                proxy = np.asarray([np.nan if v is None else v for v in s["proxies"].get(objective, [])], dtype=float)
                if len(proxy) == len(kl):
                    ax_proxy.plot(kl, proxy, color=color, linestyle=style, linewidth=1, alpha=0.7)
            for col, objective in enumerate(a.objectives, start=1):
                proxy = np.asarray([np.nan if v is None else v for v in s["proxies"].get(objective, [])], dtype=float)
                if len(proxy) != len(values):
                    continue
                ax = axes[row][col]
                ax.plot(proxy, values, color=color, marker="o", markersize=3, linewidth=1.2)
                ax.plot(proxy[peak], values[peak], marker="*", markersize=14, color=color, markeredgecolor="black")
                ax.axvline(proxy[peak], color=color, linestyle=":", linewidth=0.8)
        ax_kl.set_xlabel("KL from the reference (nats per completion)")
        ax_kl.set_ylabel(f"gold: {gold} (solid)")
        ax_proxy.set_ylabel(
            "proxy: " + ", ".join(f"{o} ({s})" for o, s in zip(a.objectives, ("--", ":", "-."))), fontsize=8
        )
        ax_kl.set_title(f"{gold} and proxies over KL; * = gold peak", fontsize=10)
        ax_kl.grid(alpha=0.3)
        if row == 0:
            _legend(fig, legend)
        for col, objective in enumerate(a.objectives, start=1):
            ax = axes[row][col]
            ax.set_xlabel(f"proxy: {objective}")
            ax.set_ylabel(f"gold: {gold}")
            ax.set_title(f"proxy point: gold peaks at the dotted {objective}", fontsize=10)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Overoptimization: proxy vs held-out gold{note}", fontsize=10)
    return _save(fig, out_dir / "overoptimization.png")


def make_plots(analysis: Analysis, out_dir: str | Path) -> dict[str, list[Path]]:
    """Write every plot the runs have data for into `out_dir`; {section: [PNG paths]} in page order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[Path]] = {"front": plot_fronts(analysis, out_dir)}
    for section, function in (
        ("trajectories", plot_trajectories),
        ("rewards", plot_reward_curves),
        ("weights", plot_weight_curves),
        ("overoptimization", plot_overoptimization),
    ):
        path = function(analysis, out_dir)
        if path is not None:
            plots[section] = [path]
    return plots
