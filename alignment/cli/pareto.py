"""`align pareto RUN_DIR... --out REPORT_DIR`: the Pareto-front report of run folders
(`alignment.reports.pareto_report`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from alignment.errors import ConfigError

HELP = "Pareto-front report of run folders: pareto.json, PNG plots and a self-contained index.html"


def parse_names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated list of names (None when `text` is None); ConfigError for an empty or repeated name."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigError(f"{option}: empty name in {text!r}; give comma-separated names such as a,b")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{option}: repeated names {repeated}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`align pareto RUN_DIR... --out REPORT_DIR [--ref auto|v1,v2,...] [--objectives a,b] [--gold g]`."""
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run folders (a sweep folder stands for the runs in it)"
    )
    parser.add_argument("--out", required=True, help="report folder (pareto.json, *.png, index.html)")
    parser.add_argument(
        "--ref", default="auto", help="reference point: 'auto' (min - 10%% of range) or v1,v2,... per objective"
    )
    parser.add_argument("--objectives", default=None, help="objectives of the front, comma-separated (default: all)")
    parser.add_argument(
        "--gold", default=None, help="objective columns to treat as held-out gold (proxy vs gold over KL), a,b"
    )
    parser.add_argument(
        "--steps", choices=("all", "final"), default="all", help="points: every evaluated step or each run's final"
    )
    parser.add_argument("--title", default=None, help="page title of index.html")


def run(args: argparse.Namespace) -> int:
    """Write the report; print where it is, the front and the hypervolume. Exit code 0."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from alignment.reports.pareto_report import build_report

    data = build_report(
        args.runs,
        args.out,
        reference=args.ref,
        objectives=parse_names(args.objectives, "--objectives"),
        gold=parse_names(args.gold, "--gold"),
        steps=args.steps,
        title=args.title,
        log=lambda line: print(line, file=sys.stderr),
    )
    front = [r["name"] for r in data["runs"] if r["final_on_front"]]
    print(
        f"{len(data['runs'])} runs, {len(data['points'])} points on {', '.join(data['objectives'])}; "
        f"skipped {len(data['skipped'])}"
    )
    print(f"front (final points): {', '.join(front)}")
    print(f"hypervolume {data['hypervolume']:.6g} (reference {data['reference_point']})")
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0
