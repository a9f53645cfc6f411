"""`align eval-rm --reward SPEC --data PAIRS --out REPORT.json`: pairwise accuracy, length bias and per-objective
statistics of a reward on preference pairs (`alignment.reports.reward_eval`)."""

from __future__ import annotations

import argparse

HELP = "evaluate a reward on preference pairs (pairwise accuracy, length bias)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags (heavy imports stay in `run`)."""
    parser.add_argument("--reward", required=True, help="component name, module:function, reward-model folder or YAML")
    parser.add_argument("--data", required=True, help="TRL preference rows: prompt, chosen, rejected (JSONL/JSON/...)")
    parser.add_argument("--out", required=True, help="where to write the JSON report (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the report, print the table."""
    from alignment.reports.reward_eval import format_table, run_eval_rm

    report = run_eval_rm(args.reward, args.data, args.out, overwrite=args.overwrite)
    print(format_table(report))
    print(f"report: {args.out}")
    return 0
