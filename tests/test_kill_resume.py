"""kill -9 at a random step, then `--resume`: single-process and 2-process `deepspeed` (ZeRO-2) GRPO runs.

Each run is a real `python -m alignment.cli train` (or `deepspeed --module alignment.cli train`) in its own
process group; when metrics.jsonl shows the step drawn from a seeded RNG, plus a random fraction of a step, the
whole group gets SIGKILL (the deepspeed launcher's workers included), often in the middle of writing a
checkpoint. Then, every checkpoint folder must be complete and loadable, and `--resume` must finish the run
with every step in metrics.jsonl exactly once and, on CPU with the same seed, the same final adapter as the
uninterrupted run (to 1e-5).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_components import REPO, check_checkpoints, cli_env, metrics_records, record_result, write_tiny_recipe
from launch_helpers import group_alive
from safetensors.torch import load_file

from alignment.cli import main
from alignment.learners.checkpointing import STAGING_DIR, latest_checkpoint

KILL_SEED = 20261123


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _logged_steps(run_dir: Path) -> list[int]:
    """Steps in metrics.jsonl so far, read while the run may be writing (an incomplete last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [int(json.loads(line)["step"]) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def _train(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=cli_env(), cwd=cwd, start_new_session=True
        )


def _kill_at(proc: subprocess.Popen[bytes], run_dir: Path, step: int, delay: float, log: Path) -> dict[str, object]:
    """SIGKILL `proc`'s process group `delay` seconds after metrics.jsonl has logged `step`; what was left."""
    deadline = time.monotonic() + 400
    while not (_logged_steps(run_dir) and _logged_steps(run_dir)[-1] >= step):
        if proc.poll() is not None:
            pytest.fail(f"run ended (exit {proc.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"step {step} not reached in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    for _ in range(600):
        if not group_alive(proc.pid):
            break
        time.sleep(0.05)
    assert not group_alive(proc.pid), "every process of the run (launcher and workers) is gone"
    staging = run_dir / STAGING_DIR
    torn = sorted(p.name for p in staging.glob("checkpoint-*")) if staging.is_dir() else []
    return {
        "kill_after_step": step,
        "delay_s": round(delay, 3),
        "logged": _logged_steps(run_dir)[-1],
        "torn_staged": torn,
        "latest_complete": latest_checkpoint(run_dir).name if latest_checkpoint(run_dir) else None,
    }


def _assert_consistent_after_kill(run_dir: Path) -> None:
    """No checkpoint folder is torn; metrics.jsonl holds each step once, in order, from 1."""
    check_checkpoints(run_dir)
    steps = _logged_steps(run_dir)
    assert steps == list(range(1, len(steps) + 1)), steps


def _assert_same_adapter(a_dir: Path, b_dir: Path) -> float:
    """The two checkpoints' adapters agree to 1e-5; returns the largest absolute difference."""
    a = load_file(str(a_dir / "adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def _assert_finished(run_dir: Path, steps: int) -> Path:
    assert [r["step"] for r in metrics_records(run_dir)] == list(range(1, steps + 1)), "no step duplicated or lost"
    checkpoints = check_checkpoints(run_dir)
    assert checkpoints[-1].name == f"checkpoint-{steps}"
    assert not list((run_dir / STAGING_DIR).glob("checkpoint-*")), "no staged leftovers after a finished run"
    return checkpoints[-1]


@pytest.mark.slow
def test_kill9_single_process_twice_then_resume_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    rng = random.Random(KILL_SEED)
    steps = 10
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=steps, save_steps=1)
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    command = [sys.executable, "-m", "alignment.cli", "train", str(recipe), "--output-dir", str(run)]

    kills = []
    first = rng.randint(2, 4)
    kills.append(_kill_at(_train(command, log, tmp_path), run, first, rng.uniform(0.0, 0.3), log))
    _assert_consistent_after_kill(run)
    second = rng.randint(first + 1, 6)
    kills.append(_kill_at(_train([*command, "--resume"], log, tmp_path), run, second, rng.uniform(0.0, 0.3), log))
    _assert_consistent_after_kill(run)
    resumed = _train([*command, "--resume"], log, tmp_path)
    assert resumed.wait(timeout=400) == 0, log.read_text()[-3000:]
    final = _assert_finished(run, steps)

    reference = tmp_path / "uninterrupted"
    assert main(["train", str(recipe), "--output-dir", str(reference)]) == 0
    difference = _assert_same_adapter(final, _assert_finished(reference, steps))
    record_result("kill9_single_process", {"kills": kills, "steps": steps, "max_abs_diff": difference})


@pytest.mark.slow
@pytest.mark.distributed
def test_kill9_two_process_deepspeed_zero2_then_resume_equals_uninterrupted(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rng = random.Random(KILL_SEED + 1)
    steps = 6
    recipe = write_tiny_recipe(
        tmp_path,
        tiny_model_dir,
        max_steps=steps,
        save_steps=1,
        num_generations=4,
        extra_train=f"deepspeed: {REPO / 'configs' / 'zero2.json'}",
    )
    deepspeed = Path(sys.executable).with_name("deepspeed")

    def command(run: Path, *extra: str) -> list[str]:
        head = [str(deepspeed), "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "alignment.cli"]
        return [*head, "train", str(recipe), "--output-dir", str(run), *extra]

    run, log = tmp_path / "killed", tmp_path / "killed.log"
    kill = _kill_at(_train(command(run), log, tmp_path), run, rng.randint(2, 3), rng.uniform(0.0, 0.3), log)
    _assert_consistent_after_kill(run)
    resumed = _train(command(run, "--resume"), log, tmp_path)
    assert resumed.wait(timeout=500) == 0, log.read_text()[-3000:]
    final = _assert_finished(run, steps)
    assert (final / "rng_state_0.pth").is_file() and (final / "rng_state_1.pth").is_file()

    reference, reference_log = tmp_path / "uninterrupted", tmp_path / "uninterrupted.log"
    uninterrupted = _train(command(reference), reference_log, tmp_path)
    assert uninterrupted.wait(timeout=500) == 0, reference_log.read_text()[-3000:]
    difference = _assert_same_adapter(final, _assert_finished(reference, steps))
    record_result("kill9_deepspeed_zero2", {"kills": [kill], "steps": steps, "max_abs_diff": difference})


@pytest.mark.slow
def test_kill9_sparsepo_then_resume_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The preference learners too: SparsePO's adapter and learned mask head survive a kill -9 exactly."""
    rng = random.Random(KILL_SEED + 1)
    steps = 8
    topics = ("bread", "rivers", "bees", "snow", "trains", "tea", "owls", "glass")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {"prompt": f"Question: Tell me about {t}.\nAnswer:", "chosen": f" {t} are nice.", "rejected": " No."}
            )
            + "\n"
            for t in topics
        )
    )
    recipe = tmp_path / "sparsepo.yaml"
    recipe.write_text(
        f"""algorithm: sparsepo
seed: 13
model: {{path: {tiny_model_dir}}}
data: {{train: {pairs}}}
preference: {{beta: 0.2, max_length: 64, separate_masks: true}}
train: {{max_steps: {steps}, pairs_per_step: 2, save_steps: 1, save_total_limit: 2, learning_rate: 1.0e-3,
         report_to: [none], torch_threads: 1}}
"""
    )
    run, log = tmp_path / "killed", tmp_path / "killed.log"
    command = [sys.executable, "-m", "alignment.cli", "train", str(recipe), "--output-dir", str(run)]
    kill = _kill_at(_train(command, log, tmp_path), run, rng.randint(2, 5), rng.uniform(0.0, 0.2), log)
    _assert_consistent_after_kill(run)
    resumed = _train([*command, "--resume"], log, tmp_path)
    assert resumed.wait(timeout=400) == 0, log.read_text()[-3000:]
    final = _assert_finished(run, steps)

    reference = tmp_path / "uninterrupted"
    assert main(["train", str(recipe), "--output-dir", str(reference)]) == 0
    expected = _assert_finished(reference, steps)
    difference = _assert_same_adapter(final, expected)
    a = load_file(str(final / "sparsepo_mask_head.safetensors"))
    b = load_file(str(expected / "sparsepo_mask_head.safetensors"))
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    record_result("kill9_sparsepo", {"kills": [kill], "steps": steps, "max_abs_diff": difference})
