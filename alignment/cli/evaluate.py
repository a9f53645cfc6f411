"""`align evaluate RUN_DIR...`: score a run's checkpoints on held-out prompts (`alignment.reports.checkpoint_eval`);
also the evaluation options `align sweep` shares."""

from __future__ import annotations

import argparse

from alignment.errors import ConfigError
from alignment.reports.checkpoint_eval import DEFAULT_SEED

HELP = "evaluate a run's checkpoints on held-out prompts (per-objective scores in RUN_DIR/eval/)"


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `align evaluate` and `align sweep`."""
    parser.add_argument(
        "--eval-data",
        default=None,
        help="held-out prompts (default: the recipe's data.eval), e.g. builtin:quickstart_eval_prompts.jsonl",
    )
    parser.add_argument("--eval-prompts", type=int, default=None, help="use only the first N held-out prompts")
    parser.add_argument("--eval-samples", type=int, default=4, help="completions per held-out prompt (default 4)")
    parser.add_argument("--eval-seed", type=int, default=DEFAULT_SEED, help="sampling seed (same for every run)")
    parser.add_argument(
        "--intermediate", action="store_true", help="evaluate every complete checkpoint and the initial policy"
    )


def check_eval_arguments(args: argparse.Namespace) -> None:
    """ConfigError for out-of-range evaluation options."""
    if args.eval_prompts is not None and args.eval_prompts < 1:
        raise ConfigError(f"--eval-prompts: must be a positive integer, got {args.eval_prompts}")
    if args.eval_samples < 1:
        raise ConfigError(f"--eval-samples: must be a positive integer, got {args.eval_samples}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`align evaluate RUN_DIR... [--eval-data ...] [--intermediate] [--overwrite]`."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by align train / sweep")
    add_eval_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="re-evaluate steps that already have a file")


def run(args: argparse.Namespace) -> int:
    """Evaluate every given run folder; exit code 0."""
    check_eval_arguments(args)
    from alignment.reports.checkpoint_eval import evaluate_run

    for run_dir in args.runs:
        written = evaluate_run(
            run_dir,
            args.eval_data,
            max_prompts=args.eval_prompts,
            samples=args.eval_samples,
            seed=args.eval_seed,
            intermediate=args.intermediate,
            include_base=args.intermediate,
            overwrite=args.overwrite,
        )
        if not written:
            print(f"{run_dir}: already evaluated (pass --overwrite to redo)")
    return 0
