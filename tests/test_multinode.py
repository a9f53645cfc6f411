"""Two "nodes" on this machine through `bash launch.sh` and the deepspeed launcher's no-ssh mode (`--hostfile
--num_nodes 2 --node_rank R --master_addr 127.0.0.1`), one CPU process each, GRPO under ZeRO-2 + LoRA.

Node 1 is SIGKILLed mid-run; node 0 must then stop by itself (its gloo peer is gone). Both nodes resume with
`--resume`, and the finished run must equal, to 1e-5 as the other kill/resume tests, an uninterrupted run of the
same recipe on one node with two processes: the same ranks, the same data order, the same result whatever the
topology.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from fault_components import check_checkpoints, metrics_records, record_result, write_tiny_recipe
from launch_helpers import REPO, finish, free_port, kill_group, launch_sh_env, start, wait_for
from safetensors.torch import load_file

STEPS = 4


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [int(json.loads(line)["step"]) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def _two_nodes(
    recipe: Path, run: Path, hostfile: Path, env: dict[str, str], tmp_path: Path, tag: str, *extra: str
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """Start node 0 and node 1 (`bash launch.sh RECIPE --hostfile ... --node_rank R`), each in its own group."""
    port = str(free_port())
    procs, logs = [], []
    for node in (0, 1):
        log = tmp_path / f"{tag}-node{node}.log"
        command = ["bash", str(REPO / "launch.sh"), str(recipe), "--hostfile", str(hostfile), "--num_nodes", "2"]
        command += ["--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", port, "--num_procs", "1"]
        command += ["--output-dir", str(run), *extra]
        procs.append(start(command, log, tmp_path, env))
        logs.append(log)
    return procs, logs


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_zero2_node_killed_then_resume_equals_one_node(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_tiny_recipe(
        tmp_path,
        tiny_model_dir,
        max_steps=STEPS,
        save_steps=1,
        num_generations=4,
        extra_train=f"deepspeed: {REPO / 'configs' / 'zero2.json'}",
    )
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    env = launch_sh_env(tmp_path)
    run = tmp_path / "two-nodes"
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    procs, logs = _two_nodes(recipe, run, hostfile, env, tmp_path, "first")
    wait_for(lambda: bool(_logged_steps(run)) and _logged_steps(run)[-1] >= 2, procs, logs, "step 2")
    kill_group(procs[1])
    killed = time.monotonic()
    try:
        code = procs[0].wait(timeout=300)
    except subprocess.TimeoutExpired:
        kill_group(procs[0])
        pytest.fail("node 0 kept running for 300 s after node 1 was killed")
    assert code != 0, "node 0 cannot finish the run without node 1"
    timings["node0_stopped_after_s"] = time.monotonic() - killed
    timings["killed_s"] = time.monotonic() - t0
    check_checkpoints(run)
    steps = _logged_steps(run)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < STEPS
    assert check_checkpoints(run), "a checkpoint to resume from was written before the kill"
    killed_at = {"logged": steps[-1], "latest_checkpoint": check_checkpoints(run)[-1].name}

    t0 = time.monotonic()
    procs, logs = _two_nodes(recipe, run, hostfile, env, tmp_path, "resumed", "--resume")
    finish(procs, logs)
    timings["resumed_s"] = time.monotonic() - t0
    assert [r["step"] for r in metrics_records(run)] == list(range(1, STEPS + 1)), "no step lost or logged twice"
    final = check_checkpoints(run)[-1]
    assert final.name == f"checkpoint-{STEPS}"
    assert (final / "rng_state_0.pth").is_file() and (final / "rng_state_1.pth").is_file()
    assert len(list((final / f"global_step{STEPS}").glob("zero_pp_rank_*_optim_states.pt"))) == 2

    reference, reference_log = tmp_path / "one-node", tmp_path / "one-node.log"
    t0 = time.monotonic()
    command = ["bash", str(REPO / "launch.sh"), str(recipe), "--num_procs", "2", "--master_port", str(free_port())]
    one_node = start([*command, "--output-dir", str(reference)], reference_log, tmp_path, env)
    finish([one_node], [reference_log])
    timings["one_node_s"] = time.monotonic() - t0
    expected = check_checkpoints(reference)[-1]
    assert expected.name == f"checkpoint-{STEPS}"
    a = load_file(str(final / "adapter_model.safetensors"))
    b = load_file(str(expected / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a and all("lora_" in key for key in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    difference = max(float((a[key] - b[key]).abs().max()) for key in a)
    record_result("two_nodes_kill_resume", {**killed_at, **timings, "max_abs_diff": difference})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num_nodes", "2", "--node_rank", "0", "--master_addr", "127.0.0.1"], "several nodes need --hostfile FILE"),
        (["--hostfile", "HOSTFILE", "--node_rank", "1"], "--node_rank needs --master_addr"),
        (["--hostfile", "HOSTFILE", "--num_nodes", "2", "--node_rank", "2", "--master_addr", "h"], "is not below"),
        (["--hostfile", "HOSTFILE", "--num_nodes", "two"], "--num_nodes must be a positive integer"),
        (["--hostfile"], "--hostfile needs a value"),
    ],
    ids=["no-hostfile", "rank-without-master", "rank-out-of-range", "bad-count", "missing-value"],
)
def test_launch_sh_refuses_incomplete_multinode_flags(tmp_path: Path, flags: list[str], message: str) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    flags = [str(hostfile) if f == "HOSTFILE" else f for f in flags]
    command = ["bash", str(REPO / "launch.sh"), str(REPO / "configs" / "multinode_grpo.yaml"), *flags]
    proc = subprocess.run(command, capture_output=True, text=True, env=launch_sh_env(tmp_path), timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
