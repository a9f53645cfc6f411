"""`align sweep RECIPE --weights ...`: one run per weighting / strategy, evaluated and reported
(`alignment.reports.sweep`)."""

from __future__ import annotations

import argparse

from alignment.cli.evaluate import add_eval_arguments, check_eval_arguments
from alignment.errors import ConfigError
from alignment.reports.sweep import STRATEGIES

HELP = "train one run per weighting / strategy, evaluate each on held-out prompts, and write the Pareto report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`align sweep RECIPE --weights ... [--strategies ...] [--strategy-options NAME=MAP] [--set k=v] ...`."""
    parser.add_argument("recipe", help="the base recipe (YAML), e.g. configs/quickstart.yaml")
    parser.add_argument(
        "--weights", required=True, help='weightings, one weight per objective: "0.2,0.8;0.5,0.5;0.8,0.2"'
    )
    parser.add_argument(
        "--strategies", default="static", help=f"comma-separated, from {', '.join(STRATEGIES)} (default static)"
    )
    parser.add_argument(
        "--strategy-options",
        action="append",
        default=[],
        metavar="NAME=MAPPING",
        help="options of one strategy, e.g. 'lagrangian={base: relevance, constraints: [{objective: length, "
        "threshold: 0.8}]}' (repeatable)",
    )
    parser.add_argument("--cross", action="store_true", help="run every non-static strategy with every weighting")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of every run's recipe, e.g. --set train.max_steps=30 (repeatable)",
    )
    parser.add_argument("--output-dir", default=None, help="sweep folder (default runs/sweep-<recipe>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue a stopped sweep in --output-dir")
    add_eval_arguments(parser)
    parser.add_argument("--no-report", action="store_true", help="do not write SWEEP_DIR/report")


def run(args: argparse.Namespace) -> int:
    """Run the sweep; exit code 0."""
    check_eval_arguments(args)
    if args.resume and not args.output_dir:
        raise ConfigError("--resume: name the sweep folder to continue with --output-dir")
    from alignment.reports.sweep import run_sweep

    run_sweep(
        args.recipe,
        args.weights,
        args.strategies,
        strategy_options=args.strategy_options,
        overrides=args.overrides,
        output_dir=args.output_dir,
        cross=args.cross,
        resume=args.resume,
        eval_data=args.eval_data,
        eval_prompts=args.eval_prompts,
        eval_samples=args.eval_samples,
        eval_seed=args.eval_seed,
        intermediate=args.intermediate,
        report=not args.no_report,
    )
    return 0
