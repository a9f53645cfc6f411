"""The rollout-engine flags `align sample` and `align serve-rollout` share, and the engine built from them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alignment.errors import ConfigError


def add_vllm_options_argument(parser: argparse.ArgumentParser) -> None:
    """`--vllm-options JSON`: more `vllm.LLM(...)` settings."""
    parser.add_argument(
        "--vllm-options", default=None, help='vLLM: more LLM(...) settings as JSON, e.g. {"enforce_eager": true}'
    )


def vllm_options(text: str | None) -> dict[str, Any]:
    """`--vllm-options` JSON as a dict; ConfigError when it is not a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--vllm-options: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--vllm-options: expected a JSON object, got {type(value).__name__}")
    return value


def engine_from_args(args: argparse.Namespace, model_path: str, **engine_settings: Any) -> Any:
    """The engine `--engine` names on `model_path` (already resolved), with the shared flags (`--dtype`,
    `--batch-size`, `--max-prompt-tokens`, `--prompt-truncation`, `--seed`, `--vllm-options`) and the command's
    own `engine_settings`. A model that does not load, or settings the engine cannot run with, raise ConfigError.
    """
    from rollout.factory import build_standalone_engine
    from rollout.loading import ModelLoadError

    options = vllm_options(getattr(args, "vllm_options", None))
    try:
        return build_standalone_engine(
            args.engine,
            model_path,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_prompt_tokens=args.max_prompt_tokens,
            prompt_truncation=args.prompt_truncation,
            seed=args.seed,
            vllm_options=options,
            **engine_settings,
        )
    except ModelLoadError as err:
        raise ConfigError(f"--model: {err}") from None
    except ValueError as err:  # settings the engine cannot run with
        raise ConfigError(f"--engine {args.engine}: {err}") from None
