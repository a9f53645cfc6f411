"""Wall time of `align pareto` on 1,000 run folders x 3 objectives (target: under 10 s).

Usage: ``python bench/bench_pareto_report.py [--runs 1000] [--steps 60] [--repeats 3]
[--out bench/results/pareto_report.json]``

Builds the run folders first (not timed) in a temporary folder: each has a resolved recipe (config.yaml from
configs/quickstart.yaml with a third objective, a strategy and a learning rate per run), a metrics.jsonl of
`--steps` lines with every key a real GRPO run logs (~1.4 kB a line), and evaluation files at steps 0, half
and final. Two cases:

* ``noisy``: final points scattered as in a real sweep (a few dozen on the front);
* ``front``: every final point on a concave front (the worst case for per-run hypervolume contributions).

Each case runs the real command line, ``python -m alignment.cli pareto SWEEP --out REPORT``, in a fresh
process (imports included) `--repeats` times; best and median wall times are reported, plus an in-process
breakdown (reading, analysis, plots, HTML). Writes JSON and prints a table; exits 0 whatever the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTIVES = ["relevance", "length", "repetition"]
STRATEGIES = ["static", "hypervolume", "gradient", "lagrangian"]
TRL_KEYS = [
    "clip_ratio/high_max", "clip_ratio/high_mean", "clip_ratio/low_mean", "clip_ratio/low_min",
    "clip_ratio/region_mean", "completions/clipped_ratio", "completions/max_length",
    "completions/max_terminated_length", "completions/mean_length", "completions/mean_terminated_length",
    "completions/min_length", "completions/min_terminated_length", "entropy", "epoch", "frac_reward_zero_std",
    "grad_norm", "learning_rate", "loss", "num_tokens", "reward", "reward_std", "step_time",
]  # fmt: skip


def final_points(rng: np.random.Generator, n: int, case: str) -> np.ndarray:
    """[n, 3] final objective values in (0, 1): scattered (`noisy`) or all on a concave front (`front`)."""
    if case == "front":
        x = np.abs(rng.standard_normal((n, 3)))
        return 0.2 + 0.7 * x / np.linalg.norm(x, axis=1, keepdims=True)
    base = rng.uniform(0.3, 0.8, size=(n, 3))
    return np.clip(base + rng.normal(0, 0.05, size=(n, 3)), 0.01, 0.99)


def write_runs(root: Path, n: int, steps: int, case: str, seed: int) -> None:
    """`n` run folders under `root` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    recipe = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    recipe["rewards"]["objectives"].append({"name": "repetition", "component": "repetition", "weight": 0.5})
    finals = final_points(rng, n, case)
    start = np.array([0.3, 0.5, 0.6])
    for i in range(n):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        run = root / f"run-{i:04d}-{strategy}"
        (run / "eval").mkdir(parents=True)
        recipe["output_dir"] = str(run)
        recipe["rewards"]["weighting"] = {"strategy": strategy, "options": {}}
        recipe["train"]["learning_rate"] = float(rng.choice([1e-3, 2e-3, 5e-3]))
        weights = {o: float(w) for o, w in zip(OBJECTIVES, rng.dirichlet(np.ones(3)))}
        for objective in recipe["rewards"]["objectives"]:
            objective["weight"] = weights[objective["name"]]
        (run / "config.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        lines = []
        for step in range(1, steps + 1):
            t = step / steps
            values = start + (finals[i] - start) * t + rng.normal(0, 0.02, 3)
            record = {key: float(v) for key, v in zip(TRL_KEYS, rng.random(len(TRL_KEYS)))}
            record.update({f"rewards/{o}/{stat}": float(v) for o, v in zip(OBJECTIVES, values)
                           for stat in ("mean", "std", "failures", "masked")})  # fmt: skip
            record.update({
                "step": step, "objectives": dict(zip(OBJECTIVES, values.tolist())), "weights": weights,
                "composite_reward": float(values @ np.array(list(weights.values()))), "kl": 0.002 * step,
            })  # fmt: skip
            if strategy == "lagrangian":
                record["weighting/lagrange/multiplier/length"] = float(rng.random())
            elif strategy == "hypervolume":
                record["weighting/hv/meta_factor"] = float(0.5 + rng.random())
            lines.append(json.dumps(record, sort_keys=True))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        for step in (0, steps // 2, steps):
            t = step / steps
            values = start + (finals[i] - start) * t
            data = {
                "format": "align-eval/1", "step": step, "checkpoint": f"checkpoint-{step}" if step else None,
                "names": OBJECTIVES,
                "objectives": {o: {"mean": float(v), "std": 0.1, "n": 128, "failures": 0, "masked": 0}
                               for o, v in zip(OBJECTIVES, values)},
                "gold": {}, "kl": {"sequence": 3.0 * t, "token": 0.1 * t},
            }  # fmt: skip
            (run / "eval" / f"step-{step}.json").write_text(json.dumps(data, indent=2, sort_keys=True))


def cli_wall(sweep: Path, out: Path, repeats: int) -> tuple[list[float], str]:
    """Wall seconds of each fresh-process `align pareto` run, and the last run's stdout."""
    times, stdout = [], ""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "alignment.cli", "pareto", str(sweep), "--out", str(out)],
            capture_output=True, text=True, env=env, cwd=REPO, check=False,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"align pareto failed: {result.stderr}")
        stdout = result.stdout
    return times, stdout


def breakdown(sweep: Path, out: Path) -> dict[str, float]:
    """In-process seconds of the report's stages (after imports)."""
    from alignment.reports.analysis import analyse, choose_objectives
    from alignment.reports.html import render_html
    from alignment.reports.pareto_report import report_data
    from alignment.reports.plots import make_plots
    from alignment.reports.runs import discover_runs, load_run, unique_names  # fmt: skip

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    folders, skipped = discover_runs([sweep])
    runs = [load_run(f, n) for f, n in zip(folders, unique_names(folders))]
    t1 = time.perf_counter()
    objectives, _ = choose_objectives(runs, None)
    analysis = analyse(runs, objectives, [], None, skipped)
    data = report_data(analysis)
    t2 = time.perf_counter()
    plots = make_plots(analysis, out)
    t3 = time.perf_counter()
    render_html(data, plots)
    t4 = time.perf_counter()
    return {"read": t1 - t0, "analyse": t2 - t1, "plots": t3 - t2, "html": t4 - t3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pareto_report.json")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-pareto-") as tmp:
        for case in ("noisy", "front"):
            sweep = Path(tmp) / case
            start = time.perf_counter()
            write_runs(sweep, args.runs, args.steps, case, args.seed)
            built = time.perf_counter() - start
            size = sum(p.stat().st_size for p in sweep.rglob("*") if p.is_file())
            times, stdout = cli_wall(sweep, Path(tmp) / f"report-{case}", args.repeats)
            report = json.loads((Path(tmp) / f"report-{case}" / "pareto.json").read_text())
            stages = breakdown(sweep, Path(tmp) / f"report-{case}-inproc")
            results.append(
                {
                    "case": case,
                    "runs": args.runs,
                    "objectives": 3,
                    "points": len(report["points"]),
                    "final_points_on_front": sum(r["final_on_front"] for r in report["runs"]),
                    "input_mb": round(size / 1e6, 1),
                    "build_seconds": round(built, 1),
                    "wall_seconds_best": round(min(times), 2),
                    "wall_seconds_median": round(statistics.median(times), 2),
                    "wall_seconds_all": [round(t, 2) for t in times],
                    "in_process_seconds": {k: round(v, 2) for k, v in stages.items()},
                    "target_seconds": 10.0,
                    "pass": max(times) < 10.0,
                    "summary": stdout.strip().splitlines()[0],
                }
            )
    payload = {
        "benchmark": "align pareto",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{'case':8} {'runs':>5} {'points':>6} {'front':>5} {'MB':>6} {'best s':>7} {'median s':>8}  in-process")
    for r in results:
        stages = " ".join(f"{k} {v}" for k, v in r["in_process_seconds"].items())
        print(f"{r['case']:8} {r['runs']:5d} {r['points']:6d} {r['final_points_on_front']:5d} {r['input_mb']:6.1f} "
              f"{r['wall_seconds_best']:7.2f} {r['wall_seconds_median']:8.2f}  {stages}")  # fmt: skip
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
