"""`align train RECIPE.yaml [--set key=value ...] [--resume] [--output-dir DIR]`: run a training recipe
(`alignment.learners.train`). Also runs under the deepspeed launcher, which adds `--local_rank` to each process."""

from __future__ import annotations

import argparse
import os

HELP = "run a training recipe (YAML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags (heavy imports stay in `run`)."""
    parser.add_argument("recipe", help="path to a YAML recipe, e.g. configs/quickstart.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.max_steps=10 (repeatable)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in output_dir from its newest checkpoint"
    )
    parser.add_argument("--output-dir", default=None, help="run folder (overrides the recipe's output_dir)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Load and validate the recipe, train, print where the results are. Bad input raises ConfigError/DataError."""
    from alignment.learners.train import train
    from alignment.recipes.recipe import load_recipe

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    recipe = load_recipe(args.recipe, overrides)
    result = train(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run finished after {result.steps} steps; results in {result.run_dir}")
        print(f"  metrics:     {result.run_dir / 'metrics.jsonl'}")
        print(f"  tensorboard: {result.run_dir / 'tensorboard'}")
        if result.final_checkpoint is not None:
            print(f"  checkpoint:  {result.final_checkpoint}")
    return 0
