"""`align pareto`: the pure functions against hand-computed values, then run folders built here (real
metrics.jsonl / eval files / config.yaml), bad run folders, the CLI, and one real short run."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from alignment.cli import main
from alignment.cli.pareto import parse_names
from alignment.errors import ConfigError
from alignment.reports.analysis import (
    auto_reference,
    choose_objectives,
    dominance_matrix,
    moving_average,
    overoptimization_series,
    parse_reference,
    recipe_differences,
    run_contributions,
)
from alignment.reports.pareto_report import build_report
from alignment.reports.runs import EvalPoint, RunRecord, SkipRun, discover_runs, flatten_recipe, load_run
from rewards.pareto import hypervolume, non_dominated

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------------------------
# Synthetic run folders (the files a real run and `align evaluate` write)
# ------------------------------------------------------------------------------------------------------------------


def write_run(
    root: Path,
    name: str,
    evals: dict[int, dict[str, float]],
    *,
    strategy: str = "static",
    weights: dict[str, float] | None = None,
    gold: dict[int, dict[str, float]] | None = None,
    kl: dict[int, float] | None = None,
    steps: int | None = None,
    learning_rate: float = 2e-3,
    multipliers: bool = False,
) -> Path:
    """A run folder: config.yaml, a metrics.jsonl line per step (objectives move linearly from the first
    evaluation to the last), and eval/step-N.json per entry of `evals` ({step: {objective: mean}})."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    objectives = list(next(iter(evals.values())))
    weights = weights or {o: 1.0 for o in objectives}
    recipe = {
        "algorithm": "grpo",
        "seed": 42,
        "output_dir": str(run),
        "rewards": {
            "objectives": [{"name": o, "component": "length", "weight": weights[o], "args": {}} for o in objectives],
            "weighting": {"strategy": strategy, "options": {}},
        },
        "train": {"max_steps": steps or max(evals), "learning_rate": learning_rate},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    first, last = evals[min(evals)], evals[max(evals)]
    total = steps or max(evals)
    lines = []
    for step in range(1, total + 1):
        t = step / total
        record: dict[str, Any] = {
            "step": step,
            "objectives": {o: first[o] + (last[o] - first[o]) * t for o in objectives},
            "weights": weights,
            "composite_reward": sum(weights[o] * last[o] for o in objectives) * t,
            "kl": 0.01 * step,
            "loss": 0.1,
        }
        if multipliers:
            record["weighting/lagrange/multiplier/" + objectives[-1]] = 0.5 + 0.1 * math.sin(step)
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for step, values in evals.items():
        data = {
            "format": "align-eval/1",
            "step": step,
            "checkpoint": f"checkpoint-{step}" if step else None,
            "names": objectives,
            "objectives": {o: {"mean": v, "std": 0.1, "n": 8, "failures": 0, "masked": 0} for o, v in values.items()},
            "gold": {g: {"mean": v, "std": 0.0, "n": 8} for g, v in (gold or {}).get(step, {}).items()},
            "kl": {"sequence": (kl or {}).get(step, 0.5 * step), "token": 0.01 * step},
        }
        (run / "eval" / f"step-{step}.json").write_text(json.dumps(data, sort_keys=True))
    return run


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root` with its content hash and modification time (to prove nothing was written)."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def record(name: str, objectives: list[str], gold: dict[str, float] | None = None) -> RunRecord:
    point = EvalPoint(10, {o: 0.5 for o in objectives}, gold or {}, 1.0)
    return RunRecord(name, Path(name), objectives, [point], [], {})


# ------------------------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------------------------


def test_auto_reference_is_min_minus_ten_percent_of_range() -> None:
    ref = auto_reference(np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]]))
    # x: range 2 -> 1 - 0.2; y: one value 2 -> 2 - 0.1 * |2|.
    np.testing.assert_allclose(ref, [0.8, 1.8])
    np.testing.assert_allclose(auto_reference(np.array([[-5.0, 0.0]])), [-5.5, -1e-6])
    with pytest.raises(ValueError):
        auto_reference(np.zeros((0, 2)))


def test_parse_reference_and_names() -> None:
    assert parse_reference("auto", 2) is None
    assert parse_reference(" AUTO ", 3) is None
    np.testing.assert_array_equal(parse_reference("0, -1.5", 2), [0.0, -1.5])
    for bad, message in (("0,1,2", "3 values for 2 objectives"), ("a,b", "expected 'auto'"), ("nan,1", "finite")):
        with pytest.raises(ConfigError, match=message) as err:
            parse_reference(bad, 2)
        assert str(err.value).startswith("--ref:")
    assert parse_names(None, "--objectives") is None
    assert parse_names("a, b", "--objectives") == ["a", "b"]
    with pytest.raises(ConfigError, match="--objectives: repeated"):
        parse_names("a,a", "--objectives")
    with pytest.raises(ConfigError, match="empty name"):
        parse_names("a,", "--objectives")


def test_dominance_matrix_by_hand() -> None:
    pts = np.array([[1, 1], [2, 2], [2, 1], [1, 1]], dtype=float)
    expected = np.zeros((4, 4), dtype=bool)
    expected[1, [0, 2, 3]] = True  # (2,2) dominates (1,1), (2,1) and the other (1,1)
    expected[2, [0, 3]] = True  # (2,1) dominates both (1,1); equal points do not dominate each other
    np.testing.assert_array_equal(dominance_matrix(pts), expected)


def test_run_contributions_by_hand() -> None:
    ref = np.zeros(2)
    # Staircase (1,3), (2,2), (3,1): HV = 1*3 + 1*2 + 1*1 = 6; removing any one loses 1. Run 3's (1,1) and
    # run 0's second point (2.5, 0.5) are dominated.
    pts = np.array([[3, 1], [2.5, 0.5], [1, 3], [2, 2], [1, 1]], dtype=float)
    owner = np.array([0, 0, 1, 2, 3])
    np.testing.assert_allclose(run_contributions(pts, owner, 4, ref), [1.0, 1.0, 1.0, 0.0])
    # Removing run 0's (3,3) uncovers run 1's (2,2): the contribution is 9 - 4, not the whole box 9.
    np.testing.assert_allclose(run_contributions(np.array([[3.0, 3.0], [2.0, 2.0]]), np.array([0, 1]), 2, ref), [5, 0])
    # A run that is alone gives all of the hypervolume.
    np.testing.assert_allclose(run_contributions(np.array([[2.0, 3.0]]), np.array([0]), 1, ref), [6.0])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_run_contributions_match_brute_force(k: int) -> None:
    """Random runs with several points each, ties and repeated points: HV(all) - HV(all but the run)."""
    rng = np.random.default_rng(k)
    for _ in range(20):
        runs = int(rng.integers(1, 12))
        owner = rng.integers(0, runs, size=int(rng.integers(1, 40)))
        pts = np.round(rng.uniform(0, 1, size=(len(owner), k)), 1)  # coarse grid: ties and duplicates
        x = np.abs(rng.standard_normal((len(owner), k)))
        pts[::2] = (x / np.linalg.norm(x, axis=1, keepdims=True))[::2]  # half on a concave front
        ref = np.full(k, -0.1)
        total = hypervolume(pts, ref)
        brute = [total - hypervolume(pts[owner != r], ref) if np.any(owner != r) else total for r in range(runs)]
        np.testing.assert_allclose(run_contributions(pts, owner, runs, ref), brute, atol=1e-12)


def test_flatten_recipe_and_differences() -> None:
    a = {"a": {"b": 1}, "rewards": {"objectives": [{"name": "x", "weight": 1.0}]}, "l": [1, 2], "output_dir": "r1"}
    b = {"a": {"b": 2}, "rewards": {"objectives": [{"name": "x", "weight": 1.0}]}, "l": [1, 2], "output_dir": "r2"}
    c = {"a": {"b": 1, "new": True}, "rewards": {"objectives": [{"name": "x", "weight": 0.5}]}, "l": [1, 2]}
    assert flatten_recipe(a) == {"a.b": 1, "rewards.objectives.x.weight": 1.0, "l": "[1, 2]", "output_dir": "r1"}
    diffs = recipe_differences({"A": flatten_recipe(a), "B": flatten_recipe(b), "C": flatten_recipe(c)})
    assert diffs == {
        "a.b": {"A": 1, "B": 2, "C": 1},
        "rewards.objectives.x.weight": {"A": 1.0, "B": 1.0, "C": 0.5},
        "a.new": {"A": None, "B": None, "C": True},
    }  # output_dir differs by construction and is left out
    assert recipe_differences({"A": flatten_recipe(a), "A2": flatten_recipe(a)}) == {}


def test_choose_objectives_majority_order_and_request() -> None:
    runs = [record("r1", ["b", "a"]), record("r2", ["a", "b"]), record("r3", ["a", "c"]), record("r4", ["a", "b"])]
    chosen, rejected = choose_objectives(runs, None)
    assert chosen == ["b", "a"]  # the most common set, in its first run's order
    assert [(r.name, "differ from the report's [b, a]" in why) for r, why in rejected] == [("r3", True)]
    chosen, rejected = choose_objectives(runs, ["a"])
    assert chosen == ["a"] and rejected == []
    chosen, rejected = choose_objectives(runs, ["a", "c"])
    assert [r.name for r, _ in rejected] == ["r1", "r2", "r4"] and "has no c" in rejected[0][1]
    # Gold names are not part of the front's objectives; a tie goes to the first run's set.
    chosen, _ = choose_objectives([record("r1", ["x", "g"]), record("r2", ["y"])], None, gold=["g"])
    assert chosen == ["x"]


def test_moving_average_by_hand() -> None:
    np.testing.assert_allclose(moving_average([1.0, 2.0, None, 4.0], 2), [1.0, 1.5, 2.0, 4.0])
    np.testing.assert_allclose(moving_average([1.0, 3.0, 5.0], 1), [1.0, 3.0, 5.0])
    out = moving_average([math.nan, 2.0, 4.0, 6.0], 3)
    assert math.isnan(out[0])
    np.testing.assert_allclose(out[1:], [2.0, 3.0, 4.0])


def test_overoptimization_series_peak() -> None:
    points = [
        EvalPoint(0, {"proxy": 0.1}, {"gold": 0.2}, 0.0),
        EvalPoint(10, {"proxy": 0.5}, {"gold": 0.6}, 2.0),
        EvalPoint(20, {"proxy": 0.9}, {"gold": 0.4}, 5.0),
        EvalPoint(30, {"proxy": 0.95}, {}, 6.0),  # no gold value: not a point of the picture
    ]
    run = RunRecord("r", Path("r"), ["proxy"], points, [], {})
    series = overoptimization_series(run)
    assert series["gold"]["steps"] == [0, 10, 20] and series["gold"]["kl"] == [0.0, 2.0, 5.0]
    assert series["gold"]["peak"] == 1 and series["gold"]["proxies"] == {"proxy": [0.1, 0.5, 0.9]}
    assert series["gold"]["source"] == "eval"
    # Gold logged in metrics.jsonl next to the KL is used when the evaluations have no gold.
    metrics = [
        {"step": s, "kl": 0.1 * s, "objectives": {"proxy": 0.1 * s}, "gold": {"g": -((s - 3) ** 2)}}
        for s in range(1, 6)
    ]
    run = RunRecord("r", Path("r"), ["proxy"], points[:1], metrics, {})
    series = overoptimization_series(run)
    assert series["g"]["source"] == "metrics" and series["g"]["steps"][series["g"]["peak"]] == 3


# ------------------------------------------------------------------------------------------------------------------
# Reading run folders
# ------------------------------------------------------------------------------------------------------------------


def test_load_run_reasons_and_notes(tmp_path: Path) -> None:
    good = write_run(tmp_path, "good", {0: {"a": 0.1, "b": 0.2}, 4: {"a": 0.5, "b": 0.6}})
    run = load_run(good)
    assert run.objectives == ["a", "b"] and [p.step for p in run.points] == [0, 4]
    assert run.points[1].values == {"a": 0.5, "b": 0.6} and run.points[1].kl == 2.0
    assert len(run.metrics) == 4 and run.strategy == "static" and run.notes == []

    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(SkipRun, match="no config.yaml"):
        load_run(no_config)
    no_eval = write_run(tmp_path, "no-eval", {2: {"a": 0.1, "b": 0.2}})
    for f in (no_eval / "eval").iterdir():
        f.unlink()
    with pytest.raises(SkipRun, match="no evaluation scores"):
        load_run(no_eval)
    torn = write_run(tmp_path, "torn", {2: {"a": 0.1, "b": 0.2}})
    (torn / "eval" / "step-2.json").write_text('{"format": "align-eval/1", "step": 2, "objec')
    with pytest.raises(SkipRun, match="every evaluation file is unreadable"):
        load_run(torn)
    killed = write_run(tmp_path, "killed", {0: {"a": 0.1, "b": 0.2}, 2: {"a": 0.3, "b": 0.2}})
    with open(killed / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "objecti')
    (killed / "eval" / "step-4.json").write_text("{")
    run = load_run(killed)
    assert [p.step for p in run.points] == [0, 2] and len(run.metrics) == 2
    assert any("torn last line" in n for n in run.notes) and any("step-4.json" in n for n in run.notes)


def test_discover_runs_expands_sweep_folders(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    a = write_run(sweep, "a", {1: {"x": 1.0}})
    b = write_run(sweep, "b", {1: {"x": 1.0}})
    (sweep / "report").mkdir()  # not a run: ignored
    single = write_run(tmp_path, "single", {1: {"x": 1.0}})
    found, skipped = discover_runs([sweep, single, tmp_path / "missing", a])
    assert found == [a, b, single]
    assert skipped == [(str(tmp_path / "missing"), "does not exist")]


# ------------------------------------------------------------------------------------------------------------------
# The report from run folders
# ------------------------------------------------------------------------------------------------------------------


def make_runs(root: Path) -> dict[str, Path]:
    """Four good runs on (relevance, length) with hand-placed final points, plus four bad folders."""
    runs = {
        "static-a": write_run(
            root,
            "static-a",
            {0: {"relevance": 0.3, "length": 0.5}, 10: {"relevance": 0.6, "length": 0.7}},
            weights={"relevance": 0.8, "length": 0.2},
        ),
        "static-b": write_run(
            root,
            "static-b",
            {0: {"relevance": 0.3, "length": 0.5}, 10: {"relevance": 0.5, "length": 0.9}},
            weights={"relevance": 0.2, "length": 0.8},
        ),
        "hv": write_run(
            root,
            "hv",
            {0: {"relevance": 0.3, "length": 0.5}, 10: {"relevance": 0.55, "length": 0.65}},
            strategy="hypervolume",
            learning_rate=1e-3,
        ),
        "lag": write_run(
            root,
            "lag",
            {
                0: {"relevance": 0.3, "length": 0.5},
                5: {"relevance": 0.5, "length": 0.6},
                10: {"relevance": 0.62, "length": 0.85},
            },
            strategy="lagrangian",
            multipliers=True,
            gold={0: {"quality": 0.5}, 5: {"quality": 0.8}, 10: {"quality": 0.7}},
            kl={0: 0.0, 5: 1.5, 10: 3.0},
        ),
    }
    no_eval = write_run(root, "no-eval", {10: {"relevance": 0.9, "length": 0.9}})
    for f in (no_eval / "eval").iterdir():
        f.unlink()
    write_run(root, "other-objectives", {10: {"relevance": 0.9, "toxicity": 0.9}})
    killed = write_run(root, "killed", {10: {"relevance": 0.9, "length": 0.9}})
    (killed / "eval" / "step-10.json").write_text('{"format": "align-eval/1", "st')  # torn, not atomic
    (killed / "eval" / ".step-12.json.abc.tmp").write_text("{")  # a writer's leftover temp file
    half = root / "half-started"
    half.mkdir()
    (half / "metrics.jsonl").write_text('{"step": 1, "objectives": {"relevance"')
    return runs


def test_report_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    runs = make_runs(root)
    before = tree_state(root)
    out = tmp_path / "report"
    code = main(["pareto", str(root), str(tmp_path / "nowhere"), "--out", str(out)])
    assert code == 0
    assert tree_state(root) == before, "a run folder was modified"
    err = capsys.readouterr().err
    skipped_lines = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped_lines) == 5, err  # one clear line per bad folder
    reasons = {Path(line.split(":")[0].split(" ", 1)[1]).name: line for line in skipped_lines}
    assert "no evaluation scores" in reasons["no-eval"]
    assert "objectives [relevance, toxicity] differ" in reasons["other-objectives"]
    assert "every evaluation file is unreadable" in reasons["killed"]
    assert "no config.yaml" in reasons["half-started"]
    assert "does not exist" in reasons["nowhere"]

    data = json.loads((out / "pareto.json").read_text())
    assert data["format"] == "align-pareto/1" and data["objectives"] == ["relevance", "length"]
    assert sorted(r["name"] for r in data["runs"]) == sorted(runs)
    assert len(data["points"]) == 2 + 2 + 2 + 3
    pts = np.array([[p["values"]["relevance"], p["values"]["length"]] for p in data["points"]])
    assert [p["non_dominated"] for p in data["points"]] == non_dominated(pts).tolist()
    # Reference: min 0.3 / 0.5 minus 10% of the ranges 0.32 / 0.4.
    np.testing.assert_allclose(data["reference_point"], [0.3 - 0.032, 0.5 - 0.04])
    assert data["reference"] == "auto"
    ref = np.array(data["reference_point"])
    assert data["hypervolume"] == pytest.approx(hypervolume(pts, ref))
    # Front: lag (0.62, 0.85) and static-b (0.5, 0.9); static-a (0.6, 0.7) and hv (0.55, 0.65) are dominated by lag.
    by_name = {r["name"]: r for r in data["runs"]}
    assert {n for n, r in by_name.items() if r["final_on_front"]} == {"lag", "static-b"}
    assert by_name["hv"]["dominated_by"] == ["lag"] and by_name["static-a"]["dominated_by"] == ["lag"]
    assert by_name["lag"]["dominates_count"] == 2 and by_name["static-b"]["dominated_by_count"] == 0
    # Contributions by hand. Front (0.5, 0.9), (0.62, 0.85): static-b owns its corner; removing lag loses its
    # strip but uncovers static-a's (0.6, 0.7).
    rx, ry = ref
    assert by_name["lag"]["hypervolume_contribution"] == pytest.approx(
        (0.62 - 0.5) * (0.85 - ry) - (0.6 - 0.5) * (0.7 - ry)
    )
    assert by_name["static-b"]["hypervolume_contribution"] == pytest.approx((0.5 - rx) * (0.9 - 0.85))
    assert by_name["hv"]["hypervolume_contribution"] == 0.0
    assert by_name["lag"]["gold_peak"]["quality"] == {
        "source": "eval",
        "step": 5,
        "kl": 1.5,
        "gold": 0.8,
        "proxies": {"relevance": 0.5, "length": 0.6},
    }
    assert data["gold"] == ["quality"]
    diffs = data["recipe_differences"]
    assert diffs["rewards.weighting.strategy"]["hv"] == "hypervolume"
    assert diffs["train.learning_rate"] == {"static-a": 2e-3, "static-b": 2e-3, "hv": 1e-3, "lag": 2e-3}
    assert "output_dir" not in diffs

    expected_plots = {
        "front_relevance_vs_length.png",
        "trajectories.png",
        "rewards.png",
        "weights.png",
        "overoptimization.png",
    }
    assert {p.name for p in out.glob("*.png")} == expected_plots
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    page = (out / "index.html").read_text()
    assert page.count('<img class="plot" src="data:image/png;base64,') == len(expected_plots)
    for forbidden in ('src="http', "src='http", 'href="http', "@import", "url(http"):
        assert forbidden not in page
    assert '<table id="runs" class="sortable">' in page and '<table id="recipes" class="sortable">' in page
    assert "<b>hv</b> is dominated by lag" in page
    assert "train.learning_rate" in page and "no evaluation scores" in page


def test_report_three_objectives_gold_column_and_given_reference(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for i, (a, b, c, g) in enumerate(
        [(0.9, 0.1, 0.5, 0.2), (0.1, 0.9, 0.5, 0.6), (0.5, 0.5, 0.9, 0.4), (0.4, 0.4, 0.4, 0.9)]
    ):
        write_run(
            root, f"r{i}", {0: {"a": 0.0, "b": 0.0, "c": 0.0, "judge": 0.0}, 8: {"a": a, "b": b, "c": c, "judge": g}}
        )
    out = tmp_path / "report"
    data = build_report([root], out, reference="-0.1,-0.1,-0.1", gold=["judge"], log=lambda line: None)
    assert data["objectives"] == ["a", "b", "c"] and data["gold"] == ["judge"]
    assert data["reference_point"] == [-0.1, -0.1, -0.1] and data["reference"] == "given"
    finals = np.array([[r["final"][o] for o in "abc"] for r in data["runs"]])
    assert {r["name"] for r in data["runs"] if r["final_on_front"]} == {"r0", "r1", "r2"}  # r3 < r2 everywhere
    assert data["hypervolume"] == pytest.approx(hypervolume(np.vstack([finals, np.zeros((1, 3))]), [-0.1] * 3))
    assert {p.name for p in out.glob("front_*.png")} == {"front_a_vs_b.png", "front_a_vs_c.png", "front_b_vs_c.png"}
    assert (out / "overoptimization.png").is_file()  # the gold column over the KL of the evaluations
    assert data["runs"][3]["final_gold"] == {"judge": 0.9}

    # --objectives picks a subset; --steps final keeps one point per run.
    data = build_report([root], tmp_path / "r2", objectives=["a", "c"], steps="final", log=lambda line: None)
    assert data["objectives"] == ["a", "c"] and len(data["points"]) == 4
    assert {r["name"] for r in data["runs"] if r["final_on_front"]} == {"r0", "r2"}


def test_many_runs_draw_a_sample_and_read_only_its_metrics(tmp_path: Path) -> None:
    """Above MAX_CURVES runs the curves show the front runs plus an even sample, and only those metrics files
    are parsed (what keeps `align pareto` on 1,000 runs fast)."""
    from alignment.reports.analysis import analyse
    from alignment.reports.plots import MAX_CURVES, curve_runs, make_plots

    n = MAX_CURVES + 50
    root = tmp_path / "runs"
    runs = []
    for i in range(n):
        # Runs 0..9 lie on the front a + b = 1; the others are dominated.
        a = i / 9 if i < 10 else 0.3
        b = 1 - a if i < 10 else 0.3
        runs.append(load_run(write_run(root, f"r{i:03d}", {0: {"a": 0.1, "b": 0.1}, 3: {"a": a, "b": b}})))
    analysis = analyse(runs, ["a", "b"], [], None, [])
    shown, note = curve_runs(analysis)
    names = [run.name for run, _ in shown]
    assert len(shown) == MAX_CURVES and {f"r{i:03d}" for i in range(10)} <= set(names)
    assert note == f" - {MAX_CURVES} of {n} runs: the 10 on the front and an even sample of the rest"
    assert all(run.records is None for run in runs)  # nothing parsed yet
    make_plots(analysis, tmp_path / "report")
    parsed = {run.name for run in runs if run.records is not None}
    assert parsed == set(names)


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    write_run(root, "r", {0: {"a": 0.1, "b": 0.1}, 4: {"a": 0.5, "b": 0.6}})
    cases = [
        (["--ref", "1,2,3"], "--ref: 3 values for 2 objectives"),
        (["--objectives", "a,zzz"], "no run folder could be reported"),
        (["--gold", "a", "--objectives", "a,b"], "--objectives: ['a'] are also named by --gold"),
    ]
    for extra, message in cases:
        assert main(["pareto", str(root), "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("align pareto: error: ") and message in err[-1], err
    assert main(["pareto", str(root / "r"), "--out", str(root / "r" / "report")]) == 2
    assert "inside run folder" in capsys.readouterr().err
    assert not (root / "r" / "report").exists()
    assert main(["pareto", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert "no run folder could be reported" in capsys.readouterr().err


def test_out_is_refused_inside_any_run_folder_or_checkpoint_and_for_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--out` inside (or equal to) any run folder or checkpoint, named on the command line or not, marked or
    only looking like a run, is refused in one line before anything is read or written; so is an --out that
    names a file, lies under a file or an unwritable folder, or is a folder of the user's."""
    from fault_components import unwritable_folder

    from alignment.outputs import claim_folder, folder_kind

    home = tmp_path / "home"
    named = write_run(home / "runs", "named", {0: {"a": 0.1, "b": 0.1}, 4: {"a": 0.5, "b": 0.6}})
    other = write_run(home / "runs", "other", {0: {"a": 0.2, "b": 0.1}, 4: {"a": 0.4, "b": 0.7}})
    (other / "checkpoint-4").mkdir()
    (other / "checkpoint-4" / "COMPLETE").write_text('{"step": 4, "files": []}')
    marked = home / "marked-run"
    claim_folder(marked, "run")
    iterative = home / "iterative"
    claim_folder(iterative, "iterative")
    (iterative / "round-1" / "train" / "checkpoint-2").mkdir(parents=True)
    notes = home / "notes.txt"
    notes.write_text("mine\n")
    (home / "thesis").mkdir()
    (home / "thesis" / "draft.tex").write_text("\\section{}\n")
    cases = [
        (other, "is inside run folder"),
        (other / "report", "is inside run folder"),
        (other / "eval" / "report", "is inside run folder"),
        (other / "checkpoint-4", "is inside checkpoint"),
        (other / "checkpoint-4" / "report", "is inside checkpoint"),
        (named / "report", "is inside run folder"),
        (marked / "report", "is inside run folder"),
        (iterative / "round-1" / "report", "is inside run folder"),
        (iterative / "round-1" / "train" / "checkpoint-2" / "r", "is inside checkpoint"),
        (notes, "is a file, not a folder"),
        (notes / "report", "cannot be created"),
        (home / "thesis", "holds files align did not write"),
        (home / "runs", "holds files align did not write"),
    ]
    locked = unwritable_folder(tmp_path)
    if locked is not None:
        cases.append((locked / "report", "no write permission"))
    before = tree_state(home), sorted(str(p) for p in home.rglob("*"))
    for out, message in cases:
        assert main(["pareto", str(named), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("align pareto: error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert message in lines[0], (out, lines[0])
    assert (tree_state(home), sorted(str(p) for p in home.rglob("*"))) == before, "a refused report wrote something"
    # A new or empty folder takes the report, and an earlier report folder is rewritten by the next one.
    (home / "empty").mkdir()
    for out in (home / "report", home / "report", home / "empty"):
        assert main(["pareto", str(named), str(other), "--out", str(out)]) == 0
        assert folder_kind(out) == "report" and (out / "pareto.json").is_file()


@pytest.mark.slow
def test_real_short_run_in_the_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Train the tiny model 2 steps, evaluate it with `align evaluate`, and report it next to built runs."""
    prompts = tmp_path / "prompts.jsonl"
    topics = ("bread", "rivers", "bees")
    prompts.write_text("".join(json.dumps({"prompt": f"Question: Tell me about {t}.\nAnswer:"}) + "\n" for t in topics))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"""
model: {{path: {tiny_model_dir}}}
data: {{train: {prompts}, eval: {prompts}}}
rollout: {{max_new_tokens: 6}}
rewards:
  objectives:
    - {{name: short, component: length, args: {{unit: words, mode: target, target: 3}}}}
    - {{name: long, component: length, args: {{unit: words, mode: target, target: 6}}}}
  gold:
    - {{name: chars, component: length, args: {{unit: chars, mode: target, target: 20}}}}
train: {{max_steps: 2, prompts_per_step: 2, num_generations: 2, save_steps: 1, save_total_limit: null,
        beta: 0.04, report_to: [none], torch_threads: 2}}
"""
    )
    run = tmp_path / "runs" / "real"
    assert main(["train", str(recipe), "--output-dir", str(run)]) == 0
    assert main(["evaluate", str(run), "--intermediate", "--eval-samples", "2"]) == 0
    files = sorted(p.name for p in (run / "eval").iterdir())
    assert files == ["step-0.json", "step-1.json", "step-2.json"]
    step2 = json.loads((run / "eval" / "step-2.json").read_text())
    assert step2["names"] == ["short", "long"] and step2["checkpoint"] == "checkpoint-2"
    assert step2["objectives"]["short"]["n"] == 6 and 0.0 <= step2["objectives"]["short"]["mean"] <= 1.0
    assert set(step2["gold"]) == {"chars"} and step2["kl"]["sequence"] >= -1.0
    assert json.loads((run / "eval" / "step-0.json").read_text())["kl"] == {"sequence": 0.0, "token": 0.0}
    write_run(tmp_path / "runs", "built", {0: {"short": 0.2, "long": 0.2}, 2: {"short": 0.9, "long": 0.1}})
    before = tree_state(tmp_path / "runs")
    data = build_report([tmp_path / "runs"], tmp_path / "report", log=lambda line: None)
    assert tree_state(tmp_path / "runs") == before
    real = next(r for r in data["runs"] if r["name"] == "real")
    assert real["evaluated_steps"] == [0, 1, 2] and real["final"]["short"] == step2["objectives"]["short"]["mean"]
    assert data["gold"] == ["chars"] and (tmp_path / "report" / "overoptimization.png").is_file()
    assert (tmp_path / "report" / "weights.png").is_file()


def test_recipe_gold_objectives_are_validated(tmp_path: Path) -> None:
    from alignment.recipes.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        """
rewards:
  objectives: [{name: short, component: length}]
  gold: [{name: judge, component: length, args: {unit: chars}}]
"""
    )
    loaded = load_recipe(recipe)
    assert [g.name for g in loaded.rewards.gold] == ["judge"] and loaded.to_dict()["rewards"]["gold"][0][
        "name"
    ] == "judge"
    with pytest.raises(ConfigError, match=r"^rewards\.gold: .*\['short'\]"):
        load_recipe(recipe, ["rewards.gold.0.name=short"])
