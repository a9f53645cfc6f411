"""The `align` command line: one thin module per subcommand, each with HELP (one line), add_arguments(parser)
and run(args) -> exit code; they import heavy libraries inside run() only, so that `align --help` stays fast.

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

COMMAND_MODULES: dict[str, str] = {
    "train": "alignment.cli.train",
    "eval-rm": "alignment.cli.eval_rm",
    "sample": "alignment.cli.sample",
    "serve-rollout": "alignment.cli.serve_rollout",
    "evaluate": "alignment.cli.evaluate",
    "sweep": "alignment.cli.sweep",
    "pareto": "alignment.cli.pareto",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="Reward-composition alignment trainer")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMAND_MODULES.items():
        command = importlib.import_module(module)
        command.add_arguments(sub.add_parser(name, help=command.HELP, description=command.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `align` console script; returns the process exit code."""
    # Nothing is fetched from a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    try:
        code = int(importlib.import_module(COMMAND_MODULES[args.command]).run(args))
        if code == 0:  # launched runs: every rank finished, so they end the process group together
            from alignment.learners.trainer_args import end_process_group

            end_process_group()
        return code
    except (UserInputError, RewardConfigError, RewardComponentError) as err:
        report_error(args.command, err)
        return 2
    except RolloutServerError as err:  # retried already; the last complete checkpoint is intact
        report_error(args.command, err)
        return 1


def report_error(command: str, err: BaseException) -> None:
    """Print ``align COMMAND: error: MESSAGE`` on a line of its own.

    A progress bar that was drawing when the error came (tqdm redraws its line with a carriage return and no
    newline) is closed first, which ends its line; stdout is flushed so that nothing printed before lands after.
    """
    sys.stdout.flush()
    tqdm_module = sys.modules.get("tqdm.std")  # only when some library has drawn a bar: never import tqdm here
    if tqdm_module is not None:
        for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
            try:
                bar.close()
            except Exception:  # noqa: BLE001, S112 - a bar that cannot close must not hide the error line
                continue
    message = " ".join(str(err).splitlines()) or type(err).__name__
    print(f"align {command}: error: {message}", file=sys.stderr, flush=True)
