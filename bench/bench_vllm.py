"""vLLM's CPU build against the transformers engine, side by side in one run (CPU; also runs on a GPU machine).

Engines (same model, prompts and sampling; n = 1, temperature 1, `--max-tokens` new tokens, EOS may stop early):
- generation tokens/s at batch 8 / 64 / 256 (best of `--rounds` timed rounds after a warm-up; the tokens are the
  completion tokens generated) on the tiny policy (`builtin:tiny-policy`, 1.1M parameters) and on a random Llama of
  about 25M parameters built here (hidden 512, 7 layers, the tiny policy's tokenizer);
- vLLM engine start (LLM(...) until ready) eager vs compiled (`enforce_eager` off: torch.compile/inductor on
  CPU), and tokens/s of the compiled engine at batch 64;
- weight sync into vLLM, full weights (vLLM's in-place reload_weights) vs the LoRA adapter (r = 8 on the seven
  projections), median milliseconds at both sizes.
GRPO (`--grpo`): median step time (steps 2..N) of the same recipe (tiny policy, LoRA r = 8 on q/v, 4 prompts x 8
completions, 32 new tokens) with our `rollout.engine` transformers and vllm, and with TRL's own GRPOTrainer given
the same settings: generating with transformers, and with TRL's colocated vLLM (`use_vllm=True,
vllm_mode="colocate"`), recorded as it stands (an error message when it fails).

Writes bench/results/vllm.json (or --out) and prints a table.

    python bench/bench_vllm.py [--rounds 2] [--max-tokens 32] [--grpo] [--grpo-steps 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from rollout.base import SamplingParams  # noqa: E402
from rollout.loading import load_policy  # noqa: E402
from rollout.transformers_engine import TransformersEngine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "vllm.json"
TINY_POLICY = ASSETS_DIR / "tiny_policy"
BATCHES = (8, 64, 256)
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GRPO_LORA = ["q_proj", "v_proj"]


def prompts(count: int) -> list[str]:
    rows = [json.loads(line) for line in (ASSETS_DIR / "quickstart_prompts.jsonl").read_text().splitlines()]
    return [rows[i % len(rows)]["prompt"] for i in range(count)]


def build_random_llama(path: Path) -> Path:
    """A random Llama of ~25M parameters (hidden 512, 7 layers, 8 heads of 64) with the tiny policy's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_POLICY))
    tokenizer.save_pretrained(str(path))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=7,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def parameters(path: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118


def throughput(engine: Any, batch: int, max_tokens: int, rounds: int) -> dict[str, Any]:
    batch_prompts = prompts(batch)
    engine.generate(batch_prompts[: min(batch, 8)], SamplingParams(max_tokens=max_tokens, seed=0))  # warm-up
    rates, lengths = [], []
    for r in range(rounds):
        start = time.perf_counter()
        groups = engine.generate(batch_prompts, SamplingParams(max_tokens=max_tokens, seed=r + 1))
        seconds = time.perf_counter() - start
        tokens = sum(len(s.completion_ids) for g in groups for s in g)
        rates.append(tokens / seconds)
        lengths.append(tokens / batch)
    return {"batch": batch, "tokens_per_s": max(rates), "rounds": rates, "mean_completion_tokens": lengths[-1]}


def lora_learner(model_path: Path) -> Any:
    from peft import LoraConfig, get_peft_model

    model, _ = load_policy(model_path)
    learner = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_MODULES))
    with torch.no_grad():
        for name, param in learner.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    return learner


def sync_ms(engine: Any, learner: Any, rounds: int = 5) -> dict[str, Any]:
    from rollout.weight_sync import WeightSync

    out = {}
    for mode in ("adapter", "full"):
        sync = WeightSync(engine, mode, shared=False)
        times = [sync.sync(learner).seconds * 1000 for _ in range(rounds)]
        last = sync.history[-1]
        out[mode] = {"ms_median": statistics.median(times), "ms_best": min(times), "bytes": last.bytes}
    return out


def vllm_engine(model_path: Path, *, eager: bool, lora: bool) -> tuple[Any, float]:
    from rollout.vllm_engine import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(
        str(model_path),
        dtype="float32",
        enable_lora=lora,
        max_lora_rank=8,
        llm_options={"enforce_eager": eager, "kv_cache_memory_bytes": 1 << 30},
    )
    return engine, time.perf_counter() - start


def engine_benchmarks(args: argparse.Namespace, models: dict[str, Path]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, path in models.items():
        row: dict[str, Any] = {"parameters": parameters(path), "vllm": [], "transformers": []}
        engine, row["vllm_start_s_eager_lora"] = vllm_engine(path, eager=True, lora=True)
        model, tokenizer = load_policy(path)
        hf = TransformersEngine(model, tokenizer, batch_size=256)
        for batch in BATCHES:
            for label, eng in (("vllm", engine), ("transformers", hf)):
                result = throughput(eng, batch, args.max_tokens, args.rounds)
                row[label].append(result)
                print(f"{name:<12} {label:<12} batch {batch:>3}: {result['tokens_per_s']:9.1f} tokens/s", flush=True)
        row["sync_into_vllm"] = sync_ms(engine, lora_learner(path))
        for mode, stats in row["sync_into_vllm"].items():
            print(f"{name:<12} sync {mode:<8}: {stats['ms_median']:8.1f} ms median, {stats['bytes'] / 1e6:.2f} MB")
        engine.close()
        results[name] = row
    rates, starts = {}, {}
    for label, eager in (("compiled", False), ("eager", True)):  # no LoRA: on CPU LoRA forces eager
        engine, starts[label] = vllm_engine(models["tiny-policy"], eager=eager, lora=False)
        rates[label] = throughput(engine, 64, args.max_tokens, args.rounds)["tokens_per_s"]
        engine.close()
        print(f"vLLM {label:<8} (tiny-policy): start {starts[label]:.1f} s, {rates[label]:.1f} tokens/s at batch 64")
    results["start"] = {"model": "tiny-policy", "start_s": starts, "tokens_per_s_batch_64": rates}
    return results


# -- GRPO step time ---------------------------------------------------------------------------------------------

GRPO_RECIPE = """
algorithm: grpo
seed: 3
model: {{path: {model}}}
peft: {{enabled: true, r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
data: {{train: builtin:quickstart_prompts.jsonl}}
rollout:
  engine: {engine}
  max_new_tokens: 32
  vllm_options: {{enforce_eager: true, kv_cache_memory_bytes: 268435456}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 24}}}}
train:
  max_steps: {steps}
  prompts_per_step: 4
  num_generations: 8
  save_steps: 1000
  learning_rate: 5.0e-3
  beta: 0.0
  report_to: [none]
  torch_threads: 2
"""


def ours(engine: str, steps: int, folder: Path) -> dict[str, Any]:
    recipe = folder / f"grpo-{engine}.yaml"
    recipe.write_text(GRPO_RECIPE.format(model=TINY_POLICY, engine=engine, steps=steps))
    run = folder / f"run-{engine}"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "train", str(recipe), "--output-dir", str(run)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in records[1:]]
    return {"step_s_median": statistics.median(times), "step_s": times, "wall_s": wall}


def trl_run(mode: str, steps: int, out: Path) -> None:
    """TRL's GRPOTrainer on the same settings (in a subprocess of the benchmark); writes its step times to `out`."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(2)
    dataset = load_dataset("json", data_files=str(ASSETS_DIR / "quickstart_prompts.jsonl"), split="train")

    def length_reward(completions: list[str], **_: Any) -> list[float]:
        return [max(0.0, 1.0 - abs(len(c.split()) - 24) / 24) for c in completions]

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

    extra = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.1} if mode == "vllm" else {}
    config = GRPOConfig(
        output_dir=str(out.parent / f"trl-{mode}"),
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=32,
        temperature=1.0,
        beta=0.0,
        learning_rate=5e-3,
        max_steps=steps,
        seed=3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        bf16=False,  # TRL's default; there is no bf16 here
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )
    model = AutoModelForCausalLM.from_pretrained(str(TINY_POLICY), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(TINY_POLICY))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    result: dict[str, Any] = {}
    try:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=GRPO_LORA),
            callbacks=[Clock()],
        )
        trainer.train()
        times = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)][1:]
        result = {"step_s_median": statistics.median(times), "step_s": times}
    except Exception as err:  # noqa: BLE001 - recorded as it stands
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        result = {"error": f"{type(err).__name__}: {message}"}
    out.write_text(json.dumps(result))


def trl(mode: str, steps: int, folder: Path) -> dict[str, Any]:
    out = folder / f"trl-{mode}.json"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--trl-run", mode, "--grpo-steps", str(steps), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )
    wall = time.perf_counter() - start
    if not out.is_file():
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    return {**json.loads(out.read_text()), "wall_s": wall}


def grpo_benchmarks(steps: int, folder: Path) -> dict[str, Any]:
    results = {}
    for label, run in (
        ("ours_transformers", lambda: ours("transformers", steps, folder)),
        ("ours_vllm", lambda: ours("vllm", steps, folder)),
        ("trl_transformers", lambda: trl("transformers", steps, folder)),
        ("trl_vllm_colocate", lambda: trl("vllm", steps, folder)),
    ):
        results[label] = run()
        row = results[label]
        shown = f"{row['step_s_median']:.2f} s/step" if "step_s_median" in row else f"failed: {row['error']}"
        print(f"GRPO {label:<20} {shown} (wall {row['wall_s']:.0f} s)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--grpo", action="store_true", help="also time GRPO steps (4 runs in subprocesses)")
    parser.add_argument("--grpo-steps", type=int, default=5)
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument("--trl-run", choices=("transformers", "vllm"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    args = parser.parse_args()
    if args.trl_run:
        trl_run(args.trl_run, args.grpo_steps, args.out)
        return
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_at_start": os.getloadavg(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "settings": {"max_tokens": args.max_tokens, "rounds": args.rounds, "batches": list(BATCHES)},
    }
    import vllm

    report["machine"]["vllm"] = vllm.__version__
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        folder = Path(tmp)
        if not args.skip_engines:
            models = {"tiny-policy": TINY_POLICY, "llama-25m": build_random_llama(folder / "llama-25m")}
            report["engines"] = engine_benchmarks(args, models)
        if args.grpo:
            report["grpo"] = grpo_benchmarks(args.grpo_steps, folder)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
