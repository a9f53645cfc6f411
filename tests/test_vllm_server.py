"""`align serve-rollout --engine vllm`, for real on vLLM's CPU build: generation, full and adapter sync over HTTP
with the served logprobs checked against the learner's forward pass, and refusals as 400s (never a 200 followed by
500s): an adapter above the server's max LoRA rank, an adapter sent to a server started without LoRA, a
temperature vLLM cannot sample at, sleep mode on CPU at start-up.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_vllm_engine import LOGPROB_ATOL, PROMPTS, TINY_POLICY, learner, lora_learner, teacher_forced

from rollout.base import RolloutServerError, SamplingParams
from rollout.remote_engine import RemoteEngine
from rollout.weight_sync import WeightSync, adapter_weights

REPO = Path(__file__).resolve().parent.parent
FAST_CPU = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def served_gap(remote: RemoteEngine, model: object) -> float:
    """Largest |served logprob - learner logprob| over 2 x 3 samples."""
    groups = remote.generate(PROMPTS, SamplingParams(n=3, temperature=0.9, max_tokens=20, seed=4))
    gap = 0.0
    for sample in (s for group in groups for s in group):
        expected = teacher_forced(model, sample.prompt_ids, sample.completion_ids, 0.9)
        gap = max(gap, (torch.tensor(sample.logprobs) - expected).abs().max().item())
    return gap


@pytest.fixture(scope="module")
def lora_server() -> Iterator[str]:
    """`align serve-rollout --engine vllm --enable-lora` in its own process; yields its URL."""
    command = [sys.executable, "-m", "alignment.cli", "serve-rollout", "--model", str(TINY_POLICY), "--port", "0"]
    command += ["--engine", "vllm", "--dtype", "float32", "--enable-lora", "--max-lora-rank", "8"]
    command += ["--vllm-options", json.dumps(FAST_CPU)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        seen = []  # vLLM logs to stdout too; the server prints its address once it listens
        while not (line := proc.stdout.readline()).startswith("rollout server (") and line and len(seen) < 500:
            seen.append(line)
        assert "(vllm engine" in line and "listening on http://127.0.0.1:" in line, "".join(seen[-5:])
        yield line.split("listening on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_served_vllm_full_and_adapter_sync_over_http(lora_server: str) -> None:
    remote = RemoteEngine(lora_server, retries=0)
    assert remote.health()["engine"] == "vllm"
    base = learner()
    assert served_gap(remote, base) < LOGPROB_ATOL
    adapted = lora_learner(seed=5)
    WeightSync(remote, "adapter", shared=True).sync(adapted)
    assert served_gap(remote, adapted) < LOGPROB_ATOL
    other = lora_learner(seed=6)
    WeightSync(remote, "full", shared=True).sync(other)  # merged weights through vLLM's reload_weights
    assert served_gap(remote, other) < LOGPROB_ATOL
    WeightSync(remote, "full", shared=True).sync(base)
    assert served_gap(remote, base) < LOGPROB_ATOL


def test_served_vllm_refusals_are_400s_and_keep_serving(lora_server: str) -> None:
    remote = RemoteEngine(lora_server, retries=0)
    adapted = lora_learner(seed=7)
    WeightSync(remote, "adapter", shared=True).sync(adapted)
    with pytest.raises(RolloutServerError, match="400.*adapter rank 16 is above this engine's max_lora_rank 8"):
        remote.load_adapter(*adapter_weights(lora_learner(rank=16)))
    with pytest.raises(RolloutServerError, match="400.*temperature must be at most 2"):
        remote.generate(PROMPTS, SamplingParams(temperature=2.5, max_tokens=4))
    with pytest.raises(RolloutServerError, match="400.*unknown parameter name"):
        remote.update_weights({"model.nope": torch.zeros(2)})
    assert served_gap(remote, adapted) < LOGPROB_ATOL  # still the adapter it had


def test_adapter_sent_to_a_vllm_server_without_lora_is_a_400() -> None:
    """In-process server on a vLLM engine started without LoRA: the adapter is refused up front."""
    import torch.distributed

    from rollout.factory import build_standalone_engine
    from rollout.server import RolloutServer

    had_group = torch.distributed.is_initialized()
    engine = build_standalone_engine("vllm", str(TINY_POLICY), dtype="float32", vllm_options=FAST_CPU)
    server = RolloutServer(engine, port=0).start()
    try:
        remote = RemoteEngine(server.url, retries=0)
        with pytest.raises(RolloutServerError, match="400.*started without LoRA.*--enable-lora"):
            remote.load_adapter(*adapter_weights(lora_learner()))
        assert served_gap(remote, learner()) < LOGPROB_ATOL
    finally:
        server.shutdown()
        engine.close()
        gc.collect()
        assert torch.distributed.is_initialized() == had_group


def test_serve_rollout_with_sleep_mode_or_bad_options_fails_in_one_line(capsys) -> None:
    from vllm.platforms import current_platform

    from alignment.cli import main

    if not current_platform.is_cpu():
        pytest.skip("sleep mode starts on a GPU (the server would then serve)")
    base = ["serve-rollout", "--model", str(TINY_POLICY), "--engine", "vllm", "--port", "0"]
    assert main([*base, "--vllm-options", "[1]"]) == 2
    assert "--vllm-options: expected a JSON object, got list" in capsys.readouterr().err
    assert main([*base, "--vllm-options", json.dumps({**FAST_CPU, "enable_sleep_mode": True})]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("align serve-rollout: error: --engine vllm: vLLM refused the engine settings:"), err
    assert len(err.splitlines()) == 1
