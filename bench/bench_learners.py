"""Our learners against plain TRL, side by side in one process, and peak memory of ZeRO-3 + LoRA vs full FT.

Usage: ``python bench/bench_learners.py [--out bench/results/learners.json] [--steps 6] [--rounds 2] [--memory]``

Step time (target: ours / TRL <= 1.05):
- GRPO: `ComposedGRPOTrainer` with a two-objective static composer (length target, repetition; rules, so that
  the reward cost is the same small number on both sides) and the `rollout/` transformers engine, vs TRL's
  `GRPOTrainer` given the same two components as plain reward functions with `reward_weights`. Same tiny
  policy (`builtin:tiny-policy`), LoRA, prompts, batch (4 prompts x 8), 16 new tokens, beta 0.04.
- DPO: `PreferenceTrainer(algorithm="dpo")` vs TRL's `DPOTrainer` (sigmoid) on the bundled preference pairs,
  8 pairs per step, LoRA.
Both trainers of a pair are built up front; their runs alternate (ours, TRL, ours, TRL, ...) for ``--rounds``
rounds of ``--steps`` steps, and the first step of every run is dropped (warm-up). Reported: median step time
of each and the ratio of medians.

Memory (``--memory``): a 2-process DeepSpeed ZeRO-3 DPO run (through the real launcher) on a random ~25M
parameter Llama, once with LoRA and once with full fine-tuning; the peak of the summed RSS of the launched
process tree, sampled every 0.1 s. Writes JSON and prints a summary; exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.05


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def run_rounds(trainers: dict[str, Any], timers: dict[str, Any], steps: int, rounds: int) -> dict[str, list[float]]:
    """Alternate the trainers' runs (each a fresh `train()` of `steps` steps); drop each run's first step."""
    kept: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            trainer.args.max_steps = steps
            before = len(timers[name].times)
            trainer.train()
            kept[name].extend(timers[name].times[before + 1 :])
    return kept


def summary(times: dict[str, list[float]]) -> dict[str, Any]:
    ours, trl = statistics.median(times["ours"]), statistics.median(times["trl"])
    return {
        "ours_median_s": ours,
        "trl_median_s": trl,
        "ratio": ours / trl,
        "target_ratio": TARGET_RATIO,
        "meets_target": ours / trl <= TARGET_RATIO,
        "steps_timed": {k: len(v) for k, v in times.items()},
    }


def bench_grpo(workdir: Path, steps: int, rounds: int) -> dict[str, Any]:
    from trl import GRPOTrainer

    from alignment.learners.factory import build_composer, peft_config
    from alignment.learners.trainer_setup import grpo_setup
    from alignment.recipes.recipe import load_recipe

    recipe_path = workdir / "grpo.yaml"
    recipe_path.write_text(
        """
algorithm: grpo
seed: 0
model: {path: builtin:tiny-policy}
peft: {enabled: true, r: 8, target_modules: [q_proj, k_proj, v_proj, o_proj]}
data: {train: builtin:quickstart_prompts.jsonl}
rollout: {max_new_tokens: 16}
rewards:
  objectives:
    - {name: length, component: length, weight: 1.0, args: {unit: words, mode: target, target: 12}}
    - {name: repetition, component: repetition, weight: 0.5}
train: {max_steps: 1, prompts_per_step: 4, num_generations: 8, beta: 0.04, save_steps: 100000,
        report_to: [none], torch_threads: 2}
"""
    )
    recipe = load_recipe(recipe_path)
    recipe.output_dir = str(workdir / "ours")
    ours_timer, trl_timer = step_timer(), step_timer()
    ours = grpo_setup(recipe, workdir / "ours", 1).build([ours_timer])

    composer = build_composer(recipe)
    functions = []
    for objective in composer.objectives:
        component = objective.component

        def reward(prompts: list, completions: list, _c: Any = component, **kw: Any) -> list[float]:
            return [float(v) for v in _c(prompts, completions)]

        reward.__name__ = objective.name
        functions.append(reward)
    from alignment.learners.factory import load_model_and_tokenizer
    from alignment.learners.trainer_args import grpo_args
    from alignment.recipes.prompt_data import load_prompts

    model, tokenizer = load_model_and_tokenizer(recipe)
    trl = GRPOTrainer(
        model=model,
        reward_funcs=functions,
        args=grpo_args(recipe, workdir / "trl", 1),
        train_dataset=load_prompts(recipe.data.train),
        processing_class=tokenizer,
        peft_config=peft_config(recipe, model),
        callbacks=[trl_timer],
    )
    times = run_rounds({"ours": ours, "trl": trl}, {"ours": ours_timer, "trl": trl_timer}, steps, rounds)
    return summary(times)


def bench_dpo(workdir: Path, steps: int, rounds: int) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOTrainer

    from alignment.learners.factory import load_model_and_tokenizer, peft_config
    from alignment.learners.preference import PreferenceTrainer
    from alignment.learners.trainer_args import preference_args
    from alignment.recipes.preference_data import read_preference_rows
    from alignment.recipes.recipe import load_recipe

    recipe_path = workdir / "dpo.yaml"
    recipe_path.write_text(
        """
algorithm: dpo
seed: 0
model: {path: builtin:tiny-policy}
peft: {enabled: true, r: 8, target_modules: [q_proj, k_proj, v_proj, o_proj]}
data: {train: builtin:preference_pairs.jsonl}
preference: {beta: 0.1, max_length: 256}
train: {max_steps: 1, pairs_per_step: 8, save_steps: 100000, report_to: [none], torch_threads: 2}
"""
    )
    recipe = load_recipe(recipe_path)
    rows, _ = read_preference_rows(recipe.data.train)
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    timers = {"ours": step_timer(), "trl": step_timer()}
    trainers = {}
    for name in ("ours", "trl"):
        model, tokenizer = load_model_and_tokenizer(recipe)
        tokenizer.padding_side = "right"
        common = {
            "model": model,
            "args": preference_args(recipe, workdir / name, 1),
            "train_dataset": data,
            "processing_class": tokenizer,
            "peft_config": peft_config(recipe, model),
            "callbacks": [timers[name]],
        }
        if name == "ours":
            trainers[name] = PreferenceTrainer(**common, algorithm="dpo", settings=recipe.preference)
        else:
            trainers[name] = DPOTrainer(**common)
    return summary(run_rounds(trainers, timers, steps, rounds))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def peak_rss_of(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, int, float]:
    """Run `cmd`; return (exit code, peak summed RSS of its process tree in bytes, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return proc.returncode, peak, time.perf_counter() - start


def bench_memory(workdir: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = REPO / "alignment" / "assets" / "tiny_policy"
    model_dir = workdir / "llama-25m"
    config = LlamaConfig.from_pretrained(str(tiny))
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 512, 1536, 8
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 64
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(model_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (model_dir / name).write_bytes((tiny / name).read_bytes())
    params = sum(p.numel() for p in model.parameters())
    deepspeed = Path(sys.executable).with_name("deepspeed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {"model_parameters": params, "processes": 2, "zero_stage": 3}
    for label, peft in (("zero3_lora", "true"), ("zero3_full", "false")):
        cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "alignment.cli"]
        cmd += ["train", str(REPO / "configs" / "dpo.yaml"), "--output-dir", str(workdir / label)]
        for override in (
            f"model.path={model_dir}",
            f"peft.enabled={peft}",
            "peft.target_modules=[q_proj,v_proj]",
            "train.max_steps=3",
            "train.save_steps=100000",
            "train.pairs_per_step=4",
            "train.report_to=[none]",
            "train.torch_threads=1",
            f"train.deepspeed={REPO / 'configs' / 'zero3.json'}",
        ):
            cmd += ["--set", override]
        code, peak, seconds = peak_rss_of(cmd, env, workdir)
        out[label] = {"exit_code": code, "peak_rss_mib": round(peak / 2**20, 1), "seconds": round(seconds, 1)}
    if out["zero3_full"]["peak_rss_mib"]:
        out["lora_over_full"] = out["zero3_lora"]["peak_rss_mib"] / out["zero3_full"]["peak_rss_mib"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "learners.json")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="also run the 2-process ZeRO-3 memory comparison")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        result["grpo"] = bench_grpo(workdir, args.steps, args.rounds)
        print(
            f"GRPO step time: ours {result['grpo']['ours_median_s']:.3f}s, TRL {result['grpo']['trl_median_s']:.3f}s, "
            f"ratio {result['grpo']['ratio']:.3f}"
        )
        result["dpo"] = bench_dpo(workdir, args.steps, args.rounds)
        print(
            f"DPO step time: ours {result['dpo']['ours_median_s']:.3f}s, TRL {result['dpo']['trl_median_s']:.3f}s, "
            f"ratio {result['dpo']['ratio']:.3f}"
        )
        if args.memory:
            result["memory"] = bench_memory(workdir)
            print(f"peak RSS (2 processes, ZeRO-3): {json.dumps(result['memory'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
