"""Rollout servers one vs two: generation throughput and the weight-sync cost per server (CPU; runs on GPU too).

For each server kind, two server processes on this machine, started as a user would:
- `align`: `align serve-rollout --model builtin:tiny-policy --threads 1` (transformers engine);
- `vllm`: `python -m vllm.entrypoints.openai.api_server --model <tiny policy> --enforce-eager --enable-lora
  --max-lora-rank 8 --logprobs-mode processed_logprobs --kv-cache-memory-bytes 256 MiB` with
  VLLM_SERVER_DEV_MODE=1 and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, each bound to its own core
  (VLLM_CPU_OMP_THREADS_BIND=0 and =1).
Measured through the learner's client (`rollout.server_url` as a list of one, then of both):
- generation: `--prompts` distinct quickstart prompts, n = `--n` completions each, up to `--max-tokens` new
  tokens, temperature 1; completion tokens per second, best and median of `--rounds` rounds after a warm-up
  (vLLM: with the adapter loaded, as an adapter-sync GRPO run generates); for `align` also one server through the
  plain client (`server_url` as a string: prompts batched per request, not per prompt);
- sync: the tiny policy with LoRA r = 8 on the seven projections; adapter-only and full (adapter merged) syncs,
  `--sync-rounds` each: the learner's total seconds per sync (collect + send to every server) and each server's
  own seconds (send + load), medians.
Writes bench/results/fleet.json (or --out) and prints a table. Other jobs on the machine change the numbers: the
load average before and after is recorded.

    python bench/bench_fleet.py [--kinds align vllm] [--prompts 32] [--n 4] [--max-tokens 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.recipes.paths import ASSETS_DIR  # noqa: E402
from alignment.recipes.recipe import RolloutConfig  # noqa: E402
from rollout.base import SamplingParams  # noqa: E402
from rollout.factory import build_server_engine  # noqa: E402
from rollout.weight_sync import WeightSync  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
TINY_POLICY = ASSETS_DIR / "tiny_policy"
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prompts(count: int) -> list[str]:
    rows = [json.loads(line) for line in (ASSETS_DIR / "quickstart_prompts.jsonl").read_text().splitlines()]
    return [rows[i % len(rows)]["prompt"] for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(kind: str, index: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    if kind == "align":
        command = [sys.executable, "-m", "alignment.cli", "serve-rollout", "--model", str(TINY_POLICY)]
        command += ["--port", str(port), "--threads", "1"]
    else:
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY_POLICY)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
        command += ["--kv-cache-memory-bytes", str(256 << 20), "--enable-lora", "--max-lora-rank", "8"]
        command += ["--logprobs-mode", "processed_logprobs", "--served-model-name", "tiny"]
        env.update(VLLM_SERVER_DEV_MODE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(index % (os.cpu_count() or 1))
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, path: str, log: Path, timeout_s: float = 900) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + path, timeout=2, trust_env=False).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout_s}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def lora_policy() -> Any:
    from peft import LoraConfig, get_peft_model

    from rollout.loading import load_policy

    model, _ = load_policy(str(TINY_POLICY), dtype="float32")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_MODULES))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model.eval()


def throughput(engine: Any, rows: list[str], params: SamplingParams, rounds: int) -> dict[str, Any]:
    engine.generate(rows[:4], params)  # warm-up
    rates, seconds = [], []
    tokens = 0
    for r in range(rounds):
        start = time.perf_counter()
        groups = engine.generate(rows, dataclasses.replace(params, seed=100 + r))
        elapsed = time.perf_counter() - start
        tokens = sum(len(s.completion_ids) for g in groups for s in g)
        rates.append(tokens / elapsed)
        seconds.append(elapsed)
    return {
        "tokens_per_s_best": max(rates),
        "tokens_per_s_median": statistics.median(rates),
        "seconds_median": statistics.median(seconds),
        "tokens_last_round": tokens,
    }


def sync_costs(engine: Any, model: Any, mode: str, rounds: int) -> dict[str, Any]:
    sync = WeightSync(engine, mode, shared=True)
    totals, outside, per_server = [], [], {}
    for _ in range(rounds):
        stats = sync.sync(model)
        totals.append(stats.seconds)
        servers = getattr(engine, "last_sync_seconds", {})
        for address, seconds in servers.items():
            per_server.setdefault(address, []).append(seconds)
        outside.append(stats.seconds - max(servers.values(), default=0.0))  # collecting, threads, cleanup
    return {
        "total_ms_median": 1000 * statistics.median(totals),
        "total_ms": [1000 * t for t in totals],
        "outside_servers_ms_median": 1000 * statistics.median(outside),
        "per_server_ms_median": {a: 1000 * statistics.median(v) for a, v in per_server.items()},
        "bytes": stats.bytes,
        "tensors": stats.tensors,
    }


def bench_kind(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_POLICY))
    servers = [start_server(kind, i, workdir / f"{kind}{i}.log") for i in range(2)]
    out: dict[str, Any] = {}
    try:
        ready_path = "/health" if kind == "align" else "/v1/models"
        out["start_seconds"] = [
            wait_ready(p, u, ready_path, workdir / f"{kind}{i}.log") for i, (p, u) in enumerate(servers)
        ]
        urls = [u for _, u in servers]
        rows = prompts(args.prompts)
        params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens)
        model = lora_policy()
        fleets = {
            "one": build_server_engine(RolloutConfig(server_url=urls[:1]), tokenizer, uses_peft=True),
            "two": build_server_engine(RolloutConfig(server_url=urls), tokenizer, uses_peft=True),
        }
        if kind == "align":
            fleets["one, batched (plain client)"] = build_server_engine(
                RolloutConfig(server_url=urls[0]), tokenizer, uses_peft=True
            )
        fleets["two"].weight_sync.sync(model)  # both serve the adapter (vLLM: generation with LoRA applied)
        out["generation"] = {}
        for name, engine in fleets.items():
            out["generation"][name] = throughput(engine, rows, params, args.rounds)
            print(kind, name, json.dumps(out["generation"][name]), flush=True)
        out["sync"] = {}
        for mode in ("adapter", "full"):
            for name in ("one", "two"):
                key = f"{mode}, {name}"
                out["sync"][key] = sync_costs(fleets[name], model, mode, args.sync_rounds)
                print(kind, key, json.dumps(out["sync"][key]), flush=True)
    finally:
        for proc, _ in servers:
            stop(proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["align", "vllm"], choices=["align", "vllm"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cpu_count": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for kind in args.kinds:
            result[kind] = bench_kind(kind, args, Path(tmp))
            result[kind]["load_after"] = os.getloadavg()
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
