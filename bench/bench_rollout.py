"""Rollout worker throughput and weight-sync cost.

CPU (always):
- transformers engine tokens/s on the quickstart policy (builtin:tiny-policy, 1.1M parameters) at batch 1, 8 and
  32 sequences (distinct quickstart prompts, n = 1, up to `--max-tokens` new tokens, temperature 1). Tokens are
  the completion tokens actually generated (EOS ends a sequence early), so the mean completion length is given
  too. Each batch size is timed over `--rounds` rounds after a warm-up; best and median rounds are reported.
- the same batch of 8 through `align serve-rollout`'s server (in-process thread, loopback HTTP), for the HTTP +
  JSON overhead;
- weight sync through that server: full (merged) weights vs the LoRA adapter only, for the quickstart's adapter
  (r = 8 on all seven projections): seconds (collect + serialise + send + load) and bytes.

GPU (when CUDA and vllm are both available; otherwise recorded as skipped, with the reason): vLLM vs transformers
tokens/s on the same model and batch sizes, full vs adapter-only sync into vLLM, and GPU memory in use.

Writes bench/results/rollout.json (or --out) and prints a table.

    python bench/bench_rollout.py [--threads 2] [--rounds 3] [--max-tokens 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.recipes.paths import ASSETS_DIR  # noqa: E402
from rollout.base import SamplingParams  # noqa: E402
from rollout.factory import vllm_import_error  # noqa: E402
from rollout.loading import load_policy  # noqa: E402
from rollout.transformers_engine import TransformersEngine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"
POLICY = ASSETS_DIR / "tiny_policy"
BATCHES = (1, 8, 32)
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prompts(count: int) -> list[str]:
    rows = [json.loads(line) for line in (ASSETS_DIR / "quickstart_prompts.jsonl").read_text().splitlines()]
    return [rows[i % len(rows)]["prompt"] for i in range(count)]


def throughput(engine: Any, batch: int, max_tokens: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Tokens/s of `engine` generating one completion for each of `batch` prompts, best and median round."""
    batch_prompts = prompts(batch)
    params = SamplingParams(n=1, max_tokens=max_tokens, seed=seed)
    engine.generate(batch_prompts, params)  # warm-up
    rates, cpu_rates, lengths = [], [], []
    for r in range(rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        groups = engine.generate(batch_prompts, SamplingParams(n=1, max_tokens=max_tokens, seed=seed + r + 1))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        tokens = sum(len(s.completion_ids) for g in groups for s in g)
        rates.append(tokens / seconds)
        cpu_rates.append(tokens / cpu_seconds)
        lengths.append(tokens / batch)
    return {
        "batch": batch,
        "tokens_per_s_best": max(rates),
        "tokens_per_s_median": statistics.median(rates),
        # tokens per CPU-second of this process: less sensitive to other work on a shared machine
        "tokens_per_cpu_s_median": statistics.median(cpu_rates),
        "mean_completion_tokens": statistics.mean(lengths),
        "rounds": rounds,
    }


def lora_learner(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    learner = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_MODULES))
    with torch.no_grad():
        for name, param in learner.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    return learner


def sync_times(engine: Any, learner: Any, rounds: int) -> dict[str, Any]:
    """Median and best seconds and the bytes of full vs adapter-only syncs of `learner` into `engine`."""
    from rollout.weight_sync import WeightSync

    out = {}
    for mode in ("full", "adapter"):
        sync = WeightSync(engine, mode, shared=True)
        sync.sync(learner)  # warm-up
        runs = [sync.sync(learner) for _ in range(rounds)]
        seconds = [s.seconds for s in runs]
        out[mode] = {
            "seconds_median": statistics.median(seconds),
            "seconds_best": min(seconds),
            "tensors": runs[0].tensors,
            "bytes": runs[0].bytes,
        }
    return out


def cpu_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    from rollout.remote_engine import RemoteEngine
    from rollout.server import RolloutServer

    model, tokenizer = load_policy(POLICY)
    engine = TransformersEngine(model, tokenizer, batch_size=64)
    results: dict[str, Any] = {"transformers": [], "parameters": sum(p.numel() for p in model.parameters())}
    for batch in BATCHES:
        row = throughput(engine, batch, args.max_tokens, args.rounds)
        results["transformers"].append(row)
        print(
            f"transformers  batch {batch:>2}: {row['tokens_per_s_best']:8.1f} tok/s best, "
            f"{row['tokens_per_s_median']:8.1f} median, {row['tokens_per_cpu_s_median']:8.1f} per CPU-s, "
            f"{row['mean_completion_tokens']:.1f} tokens/completion"
        )
    served_model, served_tokenizer = load_policy(POLICY)
    server = RolloutServer(TransformersEngine(served_model, served_tokenizer, batch_size=64), port=0).start()
    try:
        remote = RemoteEngine(server.url, retries=0)
        row = throughput(remote, 8, args.max_tokens, args.rounds)
        results["server_batch_8"] = row
        print(
            f"via server    batch  8: {row['tokens_per_s_best']:8.1f} tok/s best, "
            f"{row['tokens_per_s_median']:8.1f} median"
        )
        learner_model, _ = load_policy(POLICY)
        results["sync_via_server"] = sync_times(remote, lora_learner(learner_model), args.rounds)
        for mode, stats in results["sync_via_server"].items():
            print(
                f"sync {mode:<8} via server: {stats['seconds_median'] * 1000:8.1f} ms median, "
                f"{stats['bytes'] / 1e6:.3f} MB in {stats['tensors']} tensors"
            )
    finally:
        server.shutdown()
    return results


def gpu_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    reason = vllm_import_error()
    if reason is not None:
        return {"skipped": f"vllm cannot be imported ({reason})"}
    from rollout.vllm_engine import VLLMEngine

    free_before, total = torch.cuda.mem_get_info()
    vllm_engine = VLLMEngine(
        str(POLICY), dtype="bfloat16", gpu_memory_utilization=0.3, enable_lora=True, max_lora_rank=8
    )
    free_after, _ = torch.cuda.mem_get_info()
    model, tokenizer = load_policy(POLICY, dtype="bfloat16")
    hf_engine = TransformersEngine(model.cuda(), tokenizer, batch_size=64)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "vllm": [], "transformers": []}
    results["vllm_memory_gib"] = (free_before - free_after) / 2**30
    results["device_memory_gib"] = total / 2**30
    for batch in BATCHES:
        for name, engine in (("vllm", vllm_engine), ("transformers", hf_engine)):
            row = throughput(engine, batch, args.max_tokens, args.rounds)
            results[name].append(row)
            print(f"GPU {name:<12} batch {batch:>2}: {row['tokens_per_s_best']:9.1f} tok/s best")
    learner_model, _ = load_policy(POLICY)
    results["sync_into_vllm"] = sync_times(vllm_engine, lora_learner(learner_model.cuda()), args.rounds)
    for mode, stats in results["sync_into_vllm"].items():
        print(f"GPU sync {mode:<8}: {stats['seconds_median'] * 1000:8.1f} ms median, {stats['bytes'] / 1e6:.3f} MB")
    results["peak_torch_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_at_start": os.getloadavg(),
            "torch": torch.__version__,
        },
        "settings": {"max_tokens": args.max_tokens, "rounds": args.rounds, "policy": "builtin:tiny-policy"},
    }
    report["cpu"] = cpu_benchmarks(args)
    report["gpu"] = {"skipped": "--skip-gpu"} if args.skip_gpu else gpu_benchmarks(args)
    if "skipped" in report["gpu"]:
        print(f"GPU benchmarks skipped: {report['gpu']['skipped']}")
    report["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
