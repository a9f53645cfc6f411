"""`align sample`: on-policy preference pairs from a model or a rollout server (the library part is
`alignment.learners.onpolicy_pairs`).

    align sample --model PATH --prompts FILE --n 8 --reward SPEC --out pairs.jsonl [--pairs best-worst|all]

Writes the pair rows (OUT), every sample with its scores (OUT.samples.jsonl) and the counts (OUT.stats.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alignment.cli.engine_options import add_vllm_options_argument, engine_from_args, vllm_options
from alignment.errors import ConfigError, DataError
from alignment.learners.onpolicy_pairs import PAIR_MODES

HELP = "sample n completions per prompt, score them with a reward composer, write samples and preference pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags (heavy imports stay in `run`)."""
    parser.add_argument("--model", help="local model folder, PEFT adapter folder (e.g. a run checkpoint) or builtin:")
    parser.add_argument("--prompts", required=True, help="prompt dataset (JSONL/JSON/Parquet/datasets folder)")
    parser.add_argument("--n", type=int, default=8, help="completions per prompt (default 8)")
    parser.add_argument("--reward", required=True, help="component name, module:function, reward-model folder or YAML")
    parser.add_argument("--out", required=True, help="where to write the preference pairs (JSONL, a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output files if they already exist")
    parser.add_argument("--pairs", choices=PAIR_MODES, default="best-worst", help="which pairs to build per prompt")
    parser.add_argument("--samples-out", default=None, help="where to write every sample (default: OUT.samples.jsonl)")
    parser.add_argument("--prompt-column", default="prompt", help="the prompt field of the dataset rows")
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens per completion")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--server-url", default=None, help="generate on `align serve-rollout` at http://host:port")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (transformers)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt budget (default: context - max)")
    parser.add_argument("--prompt-truncation", choices=("left", "error"), default="left")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_vllm_options_argument(parser)


def _check_args(args: argparse.Namespace) -> None:
    if not args.model and not args.server_url:
        raise ConfigError("--model: give a model folder (or --server-url of a running `align serve-rollout`)")
    positive = {"--n": args.n, "--max-tokens": args.max_tokens, "--batch-size": args.batch_size}
    positive.update({"--max-rows": args.max_rows, "--max-prompt-tokens": args.max_prompt_tokens})
    positive["--threads"] = args.threads
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be a positive integer, got {value}")
    if args.n < 2:
        raise ConfigError(f"--n: pairs need at least 2 completions per prompt, got {args.n}")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature: must be > 0, got {args.temperature}")
    if args.engine == "vllm" and not args.server_url and args.temperature > 2:
        raise ConfigError(f"--temperature: must be <= 2 with --engine vllm, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise ConfigError(f"--top-k: must be >= 0 (0 = off), got {args.top_k}")
    vllm_options(args.vllm_options)
    if args.server_url:
        from rollout.remote_engine import parse_server_url

        try:
            parse_server_url(args.server_url)
        except ValueError as err:
            raise ConfigError(f"--server-url: {err}") from None


def _samples_path(out: Path, samples_out: str | None) -> Path:
    if samples_out:
        return Path(samples_out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.samples.jsonl")


def _stats_path(out: Path) -> Path:
    return out.with_name(f"{out.name[: -len('.jsonl')] if out.name.endswith('.jsonl') else out.name}.stats.json")


def _check_outputs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(pairs, samples, stats) paths, each checked before any work (`alignment.outputs.check_output_file`)."""
    from alignment.outputs import check_output_file

    out = Path(args.out)
    paths = (out, _samples_path(out, args.samples_out), _stats_path(out))
    if len({p.resolve() for p in paths}) < len(paths):
        raise ConfigError(f"--samples-out: {args.samples_out!r} is the same file as another output")
    for path, option in zip(paths, ("--out", "--samples-out", "--out (its .stats.json)")):
        check_output_file(path, option, overwrite=args.overwrite)
    return paths


def _engine(args: argparse.Namespace) -> Any:
    from rollout.base import RolloutServerError

    if args.server_url:
        from rollout.remote_engine import RemoteEngine

        engine = RemoteEngine(args.server_url)
        try:
            engine.health()
        except RolloutServerError as err:
            raise ConfigError(f"--server-url: {err}") from None
        return engine
    from alignment.recipes.paths import resolve_path

    return engine_from_args(args, resolve_path(args.model, None, "--model"))


def run(args: argparse.Namespace) -> int:
    """Sample, score, write samples and pairs; print a summary. Bad input raises ConfigError/DataError."""
    from alignment.recipes.paths import resolve_path

    _check_args(args)
    prompts_path = resolve_path(args.prompts, None, "--prompts")
    if args.model and not args.server_url:
        resolve_path(args.model, None, "--model")
    out, samples_out, stats_out = _check_outputs(args)  # before any heavy work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from alignment.io import atomic_write_json, atomic_write_jsonl
    from alignment.learners.factory import composer_from_spec
    from alignment.learners.onpolicy_pairs import sample_pairs
    from alignment.recipes.prompt_data import load_prompts
    from rollout.base import PromptRenderError, PromptTooLongError, RolloutServerError, SamplingParams

    composer = composer_from_spec(args.reward)
    rows = load_prompts(prompts_path, args.prompt_column, args.max_rows).to_list()
    prompts = [row["prompt"] for row in rows]
    columns = {k: [row.get(k) for row in rows] for k in rows[0] if k != "prompt"}
    engine = _engine(args)
    if getattr(engine, "tokenizer", None) is not None:  # a local engine: chat prompts must render (a server checks)
        from alignment.learners.chat_check import check_prompt_rendering

        check_prompt_rendering(engine.tokenizer, prompts, prompts_path)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    try:
        samples, pair_rows, stats = sample_pairs(
            engine, None, prompts, composer, args.n, params, args.pairs, columns=columns, batch_size=args.batch_size
        )
    except (PromptTooLongError, PromptRenderError) as err:
        raise DataError(f"{args.prompts}: {err}") from None
    except RolloutServerError as err:
        raise ConfigError(f"--server-url: {err}") from None
    atomic_write_jsonl(samples_out, samples)
    atomic_write_jsonl(out, pair_rows)
    stats.update({"model": args.model, "server_url": args.server_url, "reward": args.reward, "n": args.n})
    atomic_write_json(stats_out, stats)
    skipped = stats["skipped"]
    print(
        f"{stats['samples']} samples from {stats['prompts']} prompts ({stats['completion_tokens']} tokens, "
        f"{stats['tokens_per_second'] or 0:.0f} tokens/s); {stats['pairs']} pairs ({args.pairs}), skipped "
        f"{skipped['ties']} ties, {skipped['identical']} identical; {skipped['unscored']} unscored and "
        f"{skipped['empty']} empty samples left out; {stats['truncated_prompts']} prompts truncated"
    )
    means = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in stats["mean_scores"].items())
    composite = stats["mean_composite"]
    print(f"mean composite {'-' if composite is None else f'{composite:.3f}'}; per objective: {means}")
    print(f"pairs:   {out}\nsamples: {samples_out}\nstats:   {stats_out}")
    return 0
