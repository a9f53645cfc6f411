"""`train(recipe)`: the one entry point of training, whatever the recipe asks for.

A single run (GRPO, DPO, RPO, SparsePO: `alignment.learners.run.run_training`), or iterative on-policy preference
rounds (`alignment.learners.iterative.run_iterative`), each round of which is a single run.
"""

from __future__ import annotations

from alignment.learners.iterative import run_iterative
from alignment.learners.preflight import check_before_training
from alignment.learners.run import RunResult, open_run, run_training
from alignment.recipes.recipe import PREFERENCE_ALGORITHMS, Recipe


def train(recipe: Recipe, resume: bool = False) -> RunResult:
    """Train `recipe` (continuing its run folder's newest checkpoint with `resume`) and return where the results
    are. Bad input raises ConfigError/DataError before anything is written."""
    check_before_training(recipe)  # launcher, report_to backends, lengths vs the model's context
    if recipe.algorithm in PREFERENCE_ALGORITHMS and recipe.iterative.rounds > 0:
        run_dir, _ = open_run(recipe, resume)
        return run_iterative(recipe, run_dir, resume)
    return run_training(recipe, resume)
