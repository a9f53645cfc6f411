"""The `align` command line: `align train RECIPE.yaml [--set key=value ...] [--resume]`.

Bad input (a recipe field, a dataset row, a model path, a reward name) ends with one line on stderr naming
what is wrong and exit code 2. Also runs under the deepspeed launcher:
``deepspeed --num_gpus N --module alignment.cli train RECIPE.yaml`` (each process gets ``--local_rank``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alignment.errors import UserInputError
from rewards.errors import RewardComponentError, RewardConfigError
from rollout.base import RolloutServerError

# Further subcommands, each a module with HELP (one line), add_arguments(parser) and run(args) -> exit code.
# Those modules import heavy libraries inside run() only, so that `align --help` stays fast.
COMMAND_MODULES: dict[str, str] = {
    "sample": "alignment.sample",
    "serve-rollout": "alignment.serve_rollout",
    "evaluate": "alignment.evaluate",
    "sweep": "alignment.sweep",
    "pareto": "alignment.pareto_report",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="Reward-composition alignment trainer")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a training recipe (YAML)")
    train.add_argument("recipe", help="path to a YAML recipe, e.g. configs/quickstart.yaml")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.max_steps=10 (repeatable)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in output_dir from its newest checkpoint"
    )
    train.add_argument("--output-dir", default=None, help="run folder (overrides the recipe's output_dir)")
    train.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    evalrm = sub.add_parser("eval-rm", help="evaluate a reward on preference pairs (pairwise accuracy, length bias)")
    evalrm.add_argument("--reward", required=True, help="component name, module:function, reward-model folder or YAML")
    evalrm.add_argument("--data", required=True, help="TRL preference rows: prompt, chosen, rejected (JSONL/JSON/...)")
    evalrm.add_argument("--out", required=True, help="where to write the JSON report")
    for name, module in COMMAND_MODULES.items():
        command = importlib.import_module(module)
        command.add_arguments(sub.add_parser(name, help=command.HELP, description=command.HELP))
    return parser


def _eval_rm(args: argparse.Namespace) -> int:
    from alignment.eval_rm import format_table, run_eval_rm

    report = run_eval_rm(args.reward, args.data, args.out)
    print(format_table(report))
    print(f"report: {args.out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from alignment.config import load_recipe
    from alignment.train import run_training

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    recipe = load_recipe(args.recipe, overrides)
    result = run_training(recipe, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run finished after {result.steps} steps; results in {result.run_dir}")
        print(f"  metrics:     {result.run_dir / 'metrics.jsonl'}")
        print(f"  tensorboard: {result.run_dir / 'tensorboard'}")
        if result.final_checkpoint is not None:
            print(f"  checkpoint:  {result.final_checkpoint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `align` console script; returns the process exit code."""
    # Nothing is fetched from a model hub at run time; TRL's rollout hook is used on purpose.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval-rm":
            return _eval_rm(args)
        if args.command in COMMAND_MODULES:
            return int(importlib.import_module(COMMAND_MODULES[args.command]).run(args))
    except (UserInputError, RewardConfigError, RewardComponentError) as err:
        print(f"align {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RolloutServerError as err:  # retried already; the last complete checkpoint is intact
        print(f"align {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
