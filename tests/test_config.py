"""Recipe loading: types, unknown fields, overrides and path resolution, each error naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.errors import ConfigError
from alignment.recipes.loader import apply_overrides, load_dataclass
from alignment.recipes.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_quickstart_recipe_loads_and_resolves_builtins() -> None:
    recipe = load_recipe(REPO / "configs" / "quickstart.yaml")
    assert recipe.algorithm == "grpo"
    assert Path(recipe.model.path).is_dir()
    assert Path(recipe.data.train).is_file()
    assert [o.name for o in recipe.rewards.objectives] == ["relevance", "length"]
    assert recipe.train.learning_rate == pytest.approx(2e-3)


def test_overrides_reach_nested_fields_and_list_items() -> None:
    recipe = load_recipe(
        REPO / "configs" / "quickstart.yaml",
        ["train.max_steps=7", "rewards.objectives.1.weight=0.25", 'rollout.stop=["\\n\\n"]'],
    )
    assert recipe.train.max_steps == 7
    assert recipe.rewards.objectives[1].weight == 0.25
    assert recipe.rollout.stop == ["\n\n"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("algorithm: ppo\n", "algorithm: unknown algorithm 'ppo'; available: grpo"),
        ("train: {max_stepz: 3}\n", "train.max_stepz: unknown field"),
        ("train: {max_steps: many}\n", "train.max_steps: expected an integer, got 'many'"),
        ("train: {max_steps: 0}\n", "train.max_steps: must be a positive integer, got 0"),
        ("train: {learning_rate: fast}\n", "train.learning_rate: expected a number, got 'fast'"),
        ("rollout: {engine: tgi}\n", "rollout.engine: 'tgi' is not allowed; choose one of 'transformers', 'vllm'"),
        ("rewards: {objectives: [{component: length}]}\n", "rewards.objectives[0].name: required field is missing"),
        ("rewards: {objectives: []}\n", "rewards.objectives: needs at least one objective"),
        ("model: {path: /nonexistent/model}\n", "model.path: '/nonexistent/model' does not exist"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("train: {max_steps: [1\n", "is not valid YAML"),
        ("peft: {dropout: 1.5}\n", "peft.dropout: must be in [0, 1), got 1.5"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    base = "rewards: {objectives: [{name: l, component: length, args: {target: 5}}]}\n"
    body = text if text.startswith(("rewards", "-", "train: {max_steps: [")) else base + text
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, body))
    assert message in str(info.value)


def test_missing_recipe_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("no/such/recipe.yaml")


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.max_steps"])
    with pytest.raises(ConfigError, match="must be an index below 1"):
        apply_overrides({"a": [1]}, ["a.3=2"])


def test_load_dataclass_fills_defaults() -> None:
    recipe = load_dataclass(Recipe, {"rewards": {"objectives": [{"name": "x", "component": "length"}]}}, "")
    assert recipe.train.num_generations == 8
    assert recipe.peft.target_modules == ["q_proj", "v_proj"]
