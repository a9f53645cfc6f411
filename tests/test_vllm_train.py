"""Learners with `rollout.engine: vllm`, for real on vLLM's CPU build: a GRPO run whose reward rises and whose
`--resume` lands on the uninterrupted run's adapter, iterative DPO sampling each round with vLLM, and
`align sample --engine vllm` on a run's checkpoint (a PEFT adapter folder as --model).

The runs use the tiny policy (vLLM's CPU attention needs head size >= 32, which the tests' 8-wide random Qwen2
lacks) with `enforce_eager` and a 64 MiB KV cache; each run starts its own engine in this process.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.cli import main
from alignment.learners.iterative import ROUND_MARKER

REPO = Path(__file__).resolve().parent.parent
TINY_POLICY = REPO / "alignment" / "assets" / "tiny_policy"
VLLM_OPTIONS = "{enforce_eager: true, kv_cache_memory_bytes: 67108864}"
STEPS = 6

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def release_vllm() -> Iterator[None]:
    """Runs leave their engine to the garbage collector; release it and vLLM's process group after the module."""
    import torch.distributed

    initialized = torch.distributed.is_initialized()
    yield
    gc.collect()
    if not initialized and torch.distributed.is_initialized():
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()


def grpo_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "grpo-vllm.yaml"
    path.write_text(
        f"""
algorithm: grpo
seed: 7
model: {{path: builtin:tiny-policy}}
peft: {{enabled: true, r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
data: {{train: builtin:quickstart_prompts.jsonl, max_rows: 8}}
rollout: {{engine: vllm, max_new_tokens: 24, vllm_options: {VLLM_OPTIONS}}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 24}}}}
train:
  max_steps: {STEPS}
  prompts_per_step: 2
  num_generations: 4
  save_steps: 3
  save_total_limit: 3
  learning_rate: 5.0e-3
  beta: 0.0
  report_to: [none]
  torch_threads: 2
"""
    )
    return path


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run, and one stopped after step 3 then resumed to the end."""
    tmp = tmp_path_factory.mktemp("grpo-vllm")
    recipe = grpo_recipe(tmp)
    full, split = tmp / "full", tmp / "split"
    assert main(["train", str(recipe), "--output-dir", str(full)]) == 0
    assert main(["train", str(recipe), "--output-dir", str(split), "--set", "train.max_steps=3"]) == 0
    assert main(["train", str(recipe), "--output-dir", str(split), "--resume"]) == 0
    return {"full": full, "split": split, "tmp": tmp}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_grpo_with_vllm_raises_the_reward_and_syncs_every_step(grpo_runs: dict[str, Path]) -> None:
    records = metrics(grpo_runs["full"])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    rewards = [r["composite_reward"] for r in records]
    half = STEPS // 2
    # The policy learns the 24-word target: the second half's mean reward is above the first half's.
    assert sum(rewards[half:]) / half > sum(rewards[:half]) / half, rewards
    assert all(r["rollout/sync_seconds"] > 0 for r in records)  # the adapter went to vLLM before each rollout


def test_grpo_with_vllm_resume_matches_the_uninterrupted_run(grpo_runs: dict[str, Path]) -> None:
    full = load_file(str(grpo_runs["full"] / f"checkpoint-{STEPS}" / "adapter_model.safetensors"))
    split = load_file(str(grpo_runs["split"] / f"checkpoint-{STEPS}" / "adapter_model.safetensors"))
    assert full.keys() == split.keys()
    for key in full:  # vLLM's samples follow the checkpointed torch RNG state, so the resumed run samples the same
        torch.testing.assert_close(full[key], split[key], atol=1e-5, rtol=0)
    resumed = metrics(grpo_runs["split"])
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["composite_reward"] for r in resumed] == pytest.approx(
        [r["composite_reward"] for r in metrics(grpo_runs["full"])]
    )


def test_align_sample_with_vllm_on_a_run_checkpoint(grpo_runs: dict[str, Path], capsys) -> None:
    """--model is the run's checkpoint, a PEFT adapter folder: vLLM loads its base and generates with it."""
    out = grpo_runs["tmp"] / "pairs.jsonl"
    rewards = grpo_runs["tmp"] / "rewards.yaml"
    rewards.write_text(
        "rewards:\n  objectives:\n"
        "    - {name: length, component: length, args: {unit: words, mode: target, target: 8}}\n"
    )
    args = ["sample", "--model", str(grpo_runs["full"] / f"checkpoint-{STEPS}"), "--engine", "vllm"]
    args += ["--prompts", "builtin:quickstart_prompts.jsonl", "--max-rows", "4", "--n", "4", "--max-tokens", "16"]
    args += ["--reward", str(rewards), "--out", str(out), "--vllm-options", '{"enforce_eager": true}']
    assert main(args) == 0
    stats = json.loads(out.with_name("pairs.stats.json").read_text())
    assert stats["engine"] == "vllm" and stats["samples"] == 16 and stats["pairs"] >= 1
    assert "16 samples from 4 prompts" in capsys.readouterr().out


def test_vllm_engine_on_an_adapter_folder_generates_with_the_adapter(grpo_runs: dict[str, Path]) -> None:
    from peft import PeftModel
    from test_vllm_engine import LOGPROB_ATOL, teacher_forced
    from transformers import AutoModelForCausalLM

    from rollout.base import SamplingParams
    from rollout.vllm_engine import VLLMEngine

    checkpoint = grpo_runs["full"] / f"checkpoint-{STEPS}"
    engine = VLLMEngine(str(checkpoint), dtype="float32", llm_options={"enforce_eager": True})
    try:
        assert engine.enable_lora and engine.model_path == str(TINY_POLICY)
        base = AutoModelForCausalLM.from_pretrained(str(TINY_POLICY), dtype=torch.float32)
        policy = PeftModel.from_pretrained(base, str(checkpoint)).eval()
        params = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=3)
        for sample in engine.generate(["Question: Tell me about bees.\nAnswer:"], params)[0]:
            expected = teacher_forced(policy, sample.prompt_ids, sample.completion_ids, 1.0)
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=LOGPROB_ATOL, rtol=0)
    finally:
        engine.close()


def test_iterative_dpo_samples_every_round_with_vllm(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    topics = ("bread", "rivers", "bees", "snow")
    prompts.write_text("".join(json.dumps({"prompt": f"Question: Tell me about {t}.\nAnswer:"}) + "\n" for t in topics))
    recipe = tmp_path / "iterative.yaml"
    recipe.write_text(
        f"""
algorithm: dpo
seed: 5
model: {{path: builtin:tiny-policy}}
peft: {{enabled: true, r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
rollout: {{engine: vllm, max_new_tokens: 12, temperature: 1.2, vllm_options: {VLLM_OPTIONS}}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: chars, mode: target, target: 30}}}}
iterative: {{rounds: 2, prompts: {prompts}, n: 4, steps_per_round: 2}}
preference: {{beta: 0.2, max_length: 64}}
train: {{pairs_per_step: 2, save_steps: 2, learning_rate: 1.0e-3, report_to: [none], torch_threads: 2}}
"""
    )
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(run)]) == 0
    for r in (1, 2):
        stats = json.loads((run / f"round-{r}" / "sample_stats.json").read_text())
        assert stats["engine"] == "vllm" and stats["samples"] == 16 and stats["pairs"] >= 1
        assert (run / f"round-{r}" / ROUND_MARKER).is_file()
    # Round 2 sampled from round 1's adapter (vLLM loaded it as a LoRA on the base) and trained on from it.
    assert str(run / "round-1" / "train" / "checkpoint-2") in (run / "round-2" / "train" / "config.yaml").read_text()
