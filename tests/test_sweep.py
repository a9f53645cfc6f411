"""`align sweep`: parsing and planning by hand, then a real sweep on the tiny model (2 steps per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.errors import ConfigError
from alignment.reports.sweep import parse_strategies, parse_strategy_options, parse_weights, plan_sweep

LAGRANGIAN = {"base": "short", "constraints": [{"objective": "long", "threshold": 0.5, "direction": "lower"}]}


def test_parse_weights() -> None:
    assert parse_weights("0.2,0.8; 0.5,0.5;0.8,0.2;", 2) == [[0.2, 0.8], [0.5, 0.5], [0.8, 0.2]]
    cases = [
        ("0.2,0.8;0.5", "weighting 2 (0.5) has 1 values; the recipe has 2 objectives (a, b)"),
        ("x,1", "is not a list of numbers"),
        ("-1,2", "must be finite, >= 0 and not all 0"),
        ("0,0", "not all 0"),
        (" ; ", "no weighting"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError, match="^--weights: ") as err:
            parse_weights(text, 2, ["a", "b"])
        assert message in str(err.value)


def test_parse_strategies_and_options() -> None:
    assert parse_strategies("static, hypervolume,lagrangian") == ["static", "hypervolume", "lagrangian"]
    with pytest.raises(ConfigError, match="--strategies: .*'pareto'"):
        parse_strategies("static,pareto")
    with pytest.raises(ConfigError, match="repeated"):
        parse_strategies("static,static")
    options = parse_strategy_options(
        ["lagrangian={base: a, constraints: [{objective: b, threshold: 0.8}]}", 'gradient={"eta": 0.2}']
    )
    assert options == {
        "lagrangian": {"base": "a", "constraints": [{"objective": "b", "threshold": 0.8}]},
        "gradient": {"eta": 0.2},
    }
    for bad in ("lagrangian", "magic={a: 1}", "gradient=[1, 2]", "gradient={a: [}"):
        with pytest.raises(ConfigError, match="^--strategy-options"):
            parse_strategy_options([bad])


def test_plan_sweep_by_hand() -> None:
    plan = plan_sweep(
        [1.0, 0.5],
        "static",
        {},
        [[0.2, 0.8], [0.8, 0.2]],
        ["static", "hypervolume", "lagrangian"],
        {"lagrangian": LAGRANGIAN},
    )
    assert [(r.name, r.strategy, r.weights) for r in plan] == [
        ("static-w0.2-0.8", "static", [0.2, 0.8]),
        ("static-w0.8-0.2", "static", [0.8, 0.2]),
        ("hypervolume", "hypervolume", None),  # the recipe's own weights
        ("lagrangian", "lagrangian", [1.0, 1.0]),  # its multipliers are the weights
    ]
    assert plan[0].overrides == [
        "rewards.weighting.strategy=static",
        "rewards.weighting.options={}",
        "rewards.objectives.0.weight=0.2",
        "rewards.objectives.1.weight=0.8",
    ]
    assert plan[3].overrides[1] == f"rewards.weighting.options={json.dumps(LAGRANGIAN)}"
    # --cross runs every non-static strategy with every weighting; the base recipe's options are reused for its
    # own strategy.
    plan = plan_sweep([1.0, 1.0], "gradient", {"eta": 0.3}, [[0.2, 0.8], [0.8, 0.2]], ["gradient"], cross=True)
    assert [r.name for r in plan] == ["gradient-w0.2-0.8", "gradient-w0.8-0.2"]
    assert plan[0].overrides[1] == 'rewards.weighting.options={"eta": 0.3}'
    with pytest.raises(ConfigError, match="lagrangian strategy needs its constraints"):
        plan_sweep([1.0, 1.0], "static", {}, [[1.0, 1.0]], ["lagrangian"])
    with pytest.raises(ConfigError, match="same run twice"):
        plan_sweep([1.0, 1.0], "static", {}, [[1.0, 1.0], [1.0, 1.0]], ["static"])


def tiny_recipe(tmp_path: Path, model_dir: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    topics = ("bread", "rivers", "bees", "volcanoes")
    prompts.write_text("".join(json.dumps({"prompt": f"Question: Tell me about {t}.\nAnswer:"}) + "\n" for t in topics))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"""
model: {{path: {model_dir}}}
data: {{train: {prompts}}}
rollout: {{max_new_tokens: 6}}
rewards:
  objectives:
    - {{name: short, component: length, args: {{unit: words, mode: target, target: 2}}}}
    - {{name: long, component: length, weight: 0.5, args: {{unit: words, mode: target, target: 6}}}}
train: {{max_steps: 4, prompts_per_step: 2, num_generations: 2, save_steps: 1, beta: 0.04, report_to: [none],
        torch_threads: 2}}
"""
    )
    return recipe


def test_sweep_rejects_bad_input_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, tmp_path)  # the model folder is checked only when training starts
    out = tmp_path / "sweep"
    cases = [
        (["--weights", "1,2,3"], "--weights: weighting 1 (1,2,3) has 3 values; the recipe has 2 objectives"),
        (["--weights", "1,1", "--strategies", "lagrangian"], "lagrangian strategy needs its constraints"),
        (
            [
                "--weights",
                "1,1",
                "--strategies",
                "lagrangian",
                "--strategy-options",
                "lagrangian={constraints: [{objective: nope, threshold: 1}]}",
            ],
            "sweep run lagrangian: ",
        ),
        (["--weights", "1,1"], "data.eval: the run's recipe names no held-out prompt set"),
        (
            ["--weights", "1,1", "--eval-data", "builtin:quickstart_eval_prompts.jsonl", "--eval-samples", "0"],
            "--eval-samples: must be a positive integer",
        ),
    ]
    for extra, message in cases:
        assert main(["sweep", str(recipe), "--output-dir", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("align sweep: error: ") and message in err[-1], err
    assert not out.exists()

    # Destinations: a new sweep only into a missing or empty folder, --resume only into a sweep folder align made.
    from alignment.outputs import claim_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sweep.json").write_text("{}")  # the user's file, even with the sweep's file name
    run = tmp_path / "a-run"
    claim_folder(run, "run")
    good = ["--weights", "1,1", "--eval-data", "builtin:quickstart_eval_prompts.jsonl"]
    destinations = [
        ([str(mine)], "holds files align did not write"),
        ([str(recipe)], "is a file, not a folder"),
        ([str(mine), "--resume"], "is not a folder made by align"),
        ([str(run), "--resume"], "holds a run, not a sweep to continue"),
        ([str(run / "sweep")], "is inside run folder"),
    ]
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    for where, message in destinations:
        assert main(["sweep", str(recipe), *good, "--output-dir", *where]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("align sweep: error: ") and message in err[-1], (where, err)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    out = tmp_path / "sweep"
    args = [
        "sweep", str(recipe), "--weights", "0.2,0.8;0.8,0.2", "--strategies", "static,lagrangian",
        "--strategy-options", f"lagrangian={json.dumps(LAGRANGIAN)}", "--set", "train.max_steps=2",
        "--eval-data", str(tmp_path / "prompts.jsonl"), "--eval-prompts", "3", "--eval-samples", "2",
        "--intermediate", "--output-dir", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    names = ["static-w0.2-0.8", "static-w0.8-0.2", "lagrangian"]
    plan = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == names and {r["status"] for r in plan["runs"]} == {"done"}
    for name in names:
        run = out / name
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        # --intermediate keeps every checkpoint and evaluates them and the initial policy.
        assert sorted(p.name for p in (run / "eval").iterdir()) == ["step-0.json", "step-1.json", "step-2.json"]
        final = json.loads((run / "eval" / "step-2.json").read_text())
        assert final["prompts"] == 3 and final["samples_per_prompt"] == 2
        assert final["objectives"]["short"]["n"] == 6
    weights = json.loads((out / "static-w0.2-0.8" / "metrics.jsonl").read_text().splitlines()[0])["weights"]
    assert weights == {"short": 0.2, "long": 0.8}
    lagrangian = json.loads((out / "lagrangian" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "weighting/lagrange/multiplier/long" in lagrangian
    # Every run evaluates the same initial policy on the same prompts and seed: identical step-0 scores.
    step0 = {n: json.loads((out / n / "eval" / "step-0.json").read_text())["objectives"] for n in names}
    assert step0[names[0]] == step0[names[1]] == step0[names[2]]

    report = json.loads((out / "report" / "pareto.json").read_text())
    assert sorted(r["name"] for r in report["runs"]) == sorted(names) and report["skipped"] == []
    assert len(report["points"]) == 9 and report["hypervolume"] > 0
    assert (out / "report" / "index.html").is_file() and (out / "report" / "weights.png").is_file()
    assert "report: " in capsys.readouterr().out

    # A finished sweep resumes to nothing new; a fresh sweep into the same folder is refused.
    before = (out / "lagrangian" / "eval" / "step-2.json").read_text()
    assert main([*args, "--resume", "--no-report"]) == 0
    assert (out / "lagrangian" / "eval" / "step-2.json").read_text() == before
    assert "already trained" in capsys.readouterr().out
    assert main(args) == 2
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err
