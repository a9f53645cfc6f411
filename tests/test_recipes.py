"""Every shipped recipe loads, and each GRPO strategy and preference recipe runs a shortened CPU variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.recipes.recipe import ALGORITHMS, load_recipe

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "rewards_r3.yaml")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(recipe: Path) -> None:
    loaded = load_recipe(recipe)
    assert loaded.algorithm in ALGORITHMS
    assert loaded.algorithm == recipe.stem.split("_")[-1] or recipe.stem.startswith(("grpo", "quickstart"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "grpo_hypervolume", "grpo_gradient", "grpo_lagrangian"])
def test_strategy_recipe_runs_shortened(tmp_path: Path, name: str) -> None:
    run = tmp_path / name
    args = [
        "train",
        str(CONFIGS / f"{name}.yaml"),
        "--output-dir",
        str(run),
        "--set",
        "train.max_steps=2",
        "--set",
        "train.prompts_per_step=2",
        "--set",
        "train.save_steps=2",
        "--set",
        "train.report_to=[none]",
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert set(records[-1]["weights"]) == {"relevance", "length"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "rpo", "sparsepo"])
def test_preference_recipe_runs_shortened(tmp_path: Path, name: str) -> None:
    run = tmp_path / name
    overrides = ["train.max_steps=2", "train.pairs_per_step=4", "train.save_steps=2", "train.report_to=[none]"]
    args = ["train", str(CONFIGS / f"{name}.yaml"), "--output-dir", str(run)]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all("rewards/accuracies" in r for r in records)
