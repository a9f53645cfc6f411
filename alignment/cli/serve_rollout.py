"""`align serve-rollout`: run a rollout engine as a server that learners (`rollout.server_url`) and `align sample
--server-url` talk to over HTTP (endpoints in rollout/server.py).

    align serve-rollout --model PATH [--engine transformers|vllm] [--host 127.0.0.1] [--port 8000]

It listens on 127.0.0.1 unless told otherwise; another address needs `--allow-remote` and a token
(`--token-file FILE` or the ALIGN_ROLLOUT_TOKEN environment variable) that every request must carry as
`Authorization: Bearer <token>`. `--port 0` picks a free port; the address is printed once it listens.
Stops cleanly on Ctrl-C or SIGTERM. What one client may hold of the server (connections, seconds, body sizes)
has defaults a learner never meets and flags to change them (rollout/server.py says what each limit does).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from alignment.cli.engine_options import add_vllm_options_argument, engine_from_args, vllm_options
from alignment.errors import ConfigError

HELP = "serve a rollout engine (transformers or vLLM) over HTTP for learners and `align sample`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags (heavy imports stay in `run`)."""
    parser.add_argument("--model", required=True, help="local model folder, PEFT adapter folder or builtin:tiny-policy")
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port; default 8000)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding beyond loopback (needs a token)")
    parser.add_argument("--token-file", default=None, help="file holding the token requests must carry")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (transformers)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None, help="prompt budget (default: context - max)")
    parser.add_argument("--prompt-truncation", choices=("left", "error"), default="left")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM's share of GPU memory")
    parser.add_argument("--enable-lora", action="store_true", help="vLLM: accept LoRA adapters (adapter-only sync)")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="vLLM: largest LoRA rank accepted")
    add_vllm_options_argument(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")
    limits = parser.add_argument_group("limits (what one client may hold of the server)")
    limits.add_argument("--max-connections", type=int, default=32, help="open connections at most; more get 503")
    limits.add_argument("--header-timeout", type=float, default=10.0, help="seconds for a request line + headers")
    limits.add_argument("--body-timeout", type=float, default=30.0, help="longest silence (s) while a body arrives")
    limits.add_argument("--max-json-mib", type=float, default=4.0, help="largest /generate body in MiB (default 4)")
    limits.add_argument(
        "--max-weights-mib", type=float, default=None, help="largest weights/adapter body in MiB (default: the model's)"
    )


def _token(args: argparse.Namespace) -> str | None:
    from rollout.remote_engine import TOKEN_ENV

    if args.token_file:
        path = Path(args.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"--token-file: cannot read {str(path)!r} ({err.strerror})") from None
        if len(token) < 16:
            raise ConfigError(f"--token-file: the token in {str(path)!r} is shorter than 16 characters")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise ConfigError(f"{TOKEN_ENV}: the token is shorter than 16 characters")
    return token or None


def _limits(args: argparse.Namespace) -> Any:
    import math

    from rollout.http_transport import MIB, ServerLimits

    for flag, value in (
        ("--max-connections", args.max_connections),
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--max-json-mib", args.max_json_mib),
        ("--max-weights-mib", args.max_weights_mib),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag}: must be a positive number, got {value}")
    weights = None if args.max_weights_mib is None else max(1, int(args.max_weights_mib * MIB))
    return ServerLimits(
        max_connections=args.max_connections,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_json_bytes=max(1, int(args.max_json_mib * MIB)),
        max_weights_bytes=weights,
    )


def run(args: argparse.Namespace) -> int:
    """Load the engine, bind, serve until interrupted. Bad flags raise ConfigError."""
    import signal

    from alignment.recipes.paths import resolve_path
    from rollout.server import RolloutServer, check_binding

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be in 0-65535, got {args.port}")
    for flag, value in (("--batch-size", args.batch_size), ("--max-lora-rank", args.max_lora_rank)):
        if value < 1:
            raise ConfigError(f"{flag}: must be a positive integer, got {value}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise ConfigError(f"--max-prompt-tokens: must be a positive integer, got {args.max_prompt_tokens}")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise ConfigError(f"--gpu-memory-utilization: must be in (0, 1], got {args.gpu_memory_utilization}")
    limits = _limits(args)
    vllm_options(args.vllm_options)  # a bad --vllm-options stops before the model is loaded
    token = _token(args)
    try:
        check_binding(args.host, token, args.allow_remote)  # before the model is loaded
    except ValueError as err:
        raise ConfigError(f"--host: {err}") from None
    model_path = resolve_path(args.model, None, "--model")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = engine_from_args(
        args,
        model_path,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_lora=args.enable_lora,
        max_lora_rank=args.max_lora_rank,
        trust_remote_code=args.trust_remote_code,
    )
    try:
        server = RolloutServer(
            engine,
            host=args.host,
            port=args.port,
            token=token,
            allow_remote=args.allow_remote,
            model_name=model_path,
            limits=limits,
        )
    except OSError as err:
        raise ConfigError(f"--port: cannot listen on {args.host}:{args.port} ({err.strerror or err})") from None

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    auth = "token required" if token else "no token"
    print(f"rollout server ({engine.name} engine, {model_path}) listening on {server.url} ({auth})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("rollout server: stopping", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.httpd.server_close()
    return 0
