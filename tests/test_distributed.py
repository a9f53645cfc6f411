"""Two CPU processes through the real `deepspeed` launcher, checkpoints checked: GRPO under ZeRO-2 and ZeRO-3 +
LoRA, SparsePO under ZeRO-2 + LoRA, DPO under ZeRO-3 with full fine-tuning (a partitioned reference model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignment.learners.checkpointing import COMPLETE_MARKER, complete_checkpoints

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(recipe: Path, run: Path, cwd: Path) -> None:
    """`deepspeed --num_gpus 2 --module alignment.cli train RECIPE --output-dir RUN`; fails the test on error."""
    deepspeed = Path(sys.executable).with_name("deepspeed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(port), "--module", "alignment.cli"]
    cmd += ["train", str(recipe), "--output-dir", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # DeepSpeed's CPU all-reduce segments (66 MB per process) are unlinked when the run ends
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")), "shared memory left behind"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero_config", ["zero2.json", "zero3.json"])
def test_two_process_zero_lora_grpo(tmp_path: Path, tiny_model_dir: Path, zero_config: str) -> None:
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question: Tell me about {t}.\nAnswer:"} for t in ("bread", "rivers", "bees", "snow")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Under ZeRO-3 a scoring model loaded mid-run (the R^3 retriever) must stay whole, not be partitioned.
    relevance = "\n    - {name: relevance, component: r3.qr}" if zero_config == "zero3.json" else ""
    recipe = tmp_path / "dist.yaml"
    recipe.write_text(
        f"""
model: {{path: {tiny_model_dir}}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 8}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 4}}}}{relevance}
train: {{max_steps: 3, prompts_per_step: 2, num_generations: 4, save_steps: 2, beta: 0.04,
         deepspeed: {REPO / "configs" / zero_config}, report_to: [none], torch_threads: 1}}
"""
    )
    run = tmp_path / "run"
    launch_two_processes(recipe, run, tmp_path)

    checkpoints = complete_checkpoints(run)
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-3"]
    final = checkpoints[-1]
    assert json.loads((final / COMPLETE_MARKER).read_text())["step"] == 3
    # Both ranks' RNG states and ZeRO optimizer partitions are in the checkpoint.
    assert (final / "rng_state_0.pth").is_file() and (final / "rng_state_1.pth").is_file()
    assert len(list((final / "global_step3").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    weights = load_file(str(final / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "only rank 0 writes metrics, once per step"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("algorithm", "zero_config", "peft"),
    [("sparsepo", "zero2.json", True), ("dpo", "zero3.json", False)],
    ids=["sparsepo-zero2-lora", "dpo-zero3-full"],
)
def test_two_process_preference_learners(
    tmp_path: Path, tiny_model_dir: Path, algorithm: str, zero_config: str, peft: bool
) -> None:
    topics = ("bread", "rivers", "bees", "snow", "trains", "tea", "owls", "glass")
    rows = [
        {"prompt": f"Question: Tell me about {t}.\nAnswer:", "chosen": f" {t} are nice.", "rejected": " No idea."}
        for t in topics
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "dist.yaml"
    recipe.write_text(
        f"""
algorithm: {algorithm}
model: {{path: {tiny_model_dir}}}
peft: {{enabled: {str(peft).lower()}}}
data: {{train: {data}}}
preference: {{beta: 0.2, max_length: 64}}
train: {{max_steps: 3, pairs_per_step: 4, save_steps: 2, learning_rate: 1.0e-3,
         deepspeed: {REPO / "configs" / zero_config}, report_to: [none], torch_threads: 1}}
"""
    )
    run = tmp_path / "run"
    launch_two_processes(recipe, run, tmp_path)
    checkpoints = complete_checkpoints(run)
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-3"]
    final = checkpoints[-1]
    assert len(list((final / "global_step3").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    if peft:
        assert all("lora_" in key for key in load_file(str(final / "adapter_model.safetensors")))
    else:
        weights = load_file(str(final / "model.safetensors"))
        assert "model.embed_tokens.weight" in weights and weights["model.embed_tokens.weight"].numel() > 0
    if algorithm == "sparsepo":
        head = load_file(str(final / "sparsepo_mask_head.safetensors"))
        assert head and all(v.numel() > 0 for v in head.values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3], "only rank 0 writes metrics, once per step"
    assert all("rewards/accuracies" in r for r in records)
    if algorithm == "sparsepo":
        assert all(0.0 <= r["mask/sparsity"] <= 1.0 for r in records)
