"""vLLM's own OpenAI-compatible server as a rollout server, for real on vLLM's CPU build: two servers started as a
user would (`python -m vllm.entrypoints.openai.api_server ...`, eager, a 64 MiB KV cache, LoRA on,
VLLM_SERVER_DEV_MODE=1 and runtime LoRA loading), shared by the module. Checked: detection and the logprobs-mode
measurement, served logprobs against the learner's forward pass before and after an adapter sync (LoRA loading)
and a full sync (reload_weights from the staged folder), refusals, seeded samples that do not depend on the split,
a GRPO run synced through the server, and a fleet of two that loses one server.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from test_vllm_engine import LOGPROB_ATOL, TINY_POLICY, learner, lora_learner, teacher_forced
from transformers import AutoTokenizer

from alignment.recipes.recipe import RolloutConfig
from rollout import fleet as fleet_module
from rollout.base import PromptTooLongError, RolloutServerError, Sample, SamplingParams
from rollout.factory import build_server_engine
from rollout.fleet import Fleet, detect_kind
from rollout.vllm_server_client import PROBE_TEMPERATURE, VLLMServerClient
from rollout.weight_sync import WeightSync, adapter_weights

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Question: Tell me about bees.\nAnswer:", "Question: What do you know about apples?\nAnswer:"]
PARAMS = SamplingParams(n=3, temperature=0.9, max_tokens=16, seed=4)
SERVER_ENV = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vllm_server(log: Path) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server on a free loopback port (its own process group: vLLM starts an engine process)."""
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY_POLICY)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
    command += ["--kv-cache-memory-bytes", str(64 << 20), "--enable-lora", "--max-lora-rank", "8"]
    command += ["--logprobs-mode", "processed_logprobs", "--served-model-name", "tiny"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV}, start_new_session=True
        )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vLLM server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"vLLM server not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[subprocess.Popen, str]]]:
    """Two vLLM servers, started at once; the last test of the module kills the second."""
    logs = tmp_path_factory.mktemp("vllm-servers")
    started = [start_vllm_server(logs / f"server{i}.log") for i in range(2)]
    try:
        for i, (proc, url) in enumerate(started):
            wait_ready(proc, url, logs / f"server{i}.log")
        yield started
    finally:
        for proc, _ in started:
            stop(proc)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TINY_POLICY))


def connect(urls: list[str] | str, tokenizer, *, uses_peft: bool = True, **settings) -> Fleet:
    config = RolloutConfig(server_url=urls, engine="vllm", retries=1, retry_backoff_s=0.05, **settings)
    fleet = build_server_engine(config, tokenizer, uses_peft=uses_peft)
    assert isinstance(fleet, Fleet) and fleet.kind == "vllm"
    return fleet


def served_gap(groups: list[list[Sample]], model: object, temperature: float = PARAMS.temperature) -> float:
    gap = 0.0
    for sample in (s for group in groups for s in group):
        expected = teacher_forced(model, sample.prompt_ids, sample.completion_ids, temperature)
        gap = max(gap, (torch.tensor(sample.logprobs) - expected).abs().max().item())
    return gap


def test_a_vllm_server_is_detected_and_its_settings_read(vllm_servers, tokenizer) -> None:
    url = vllm_servers[0][1]
    assert detect_kind(url) == "vllm"
    fleet = connect(url, tokenizer)  # a string URL: still a fleet (prompts go as the learner's token ids)
    member = fleet.members[0]
    assert isinstance(member, VLLMServerClient) and member.base_model == "tiny"
    assert (member.context_length, member.lora_enabled, member.max_lora_rank) == (256, True, 8)
    # The measured spread of the top logprobs grows by 1/T: temperature is applied before the logprobs.
    scale = member._measure_logprob_scale(tokenizer("Question: what is the answer?")["input_ids"])
    assert scale == pytest.approx(1 / PROBE_TEMPERATURE, rel=1e-3)
    from rollout.server import RolloutServer
    from rollout.transformers_engine import TransformersEngine

    align = RolloutServer(TransformersEngine(learner(), tokenizer), port=0).start()
    try:
        with pytest.raises(ValueError, match=r"mixes align serve-rollout and vLLM servers .*\(align\).*\(vllm\)"):
            connect([align.url, url], tokenizer)
    finally:
        align.shutdown()


def test_served_logprobs_match_the_learner_through_adapter_and_full_syncs(vllm_servers, tokenizer) -> None:
    fleet = connect(vllm_servers[0][1], tokenizer)
    member = fleet.members[0]
    base = learner()
    assert served_gap(fleet.generate(PROMPTS, PARAMS), base) < LOGPROB_ATOL
    adapted = lora_learner(seed=5)
    assert fleet.weight_sync.mode == "adapter"
    fleet.weight_sync.sync(adapted)  # written once, loaded with /v1/load_lora_adapter
    name = f"align-policy-{fleet.staging.run_tag}-1"
    assert member.weight_version() == name and member.model_name == name
    assert served_gap(fleet.generate(PROMPTS, PARAMS), adapted) < LOGPROB_ATOL
    follower = connect(vllm_servers[0][1], tokenizer)  # another learner process: never syncs, reads /weight_info
    assert served_gap(follower.generate(PROMPTS, PARAMS), adapted) < LOGPROB_ATOL
    fleet.weight_sync.sync(lora_learner(seed=6))
    assert member.model_name == f"align-policy-{fleet.staging.run_tag}-2"
    assert [p.name for p in fleet.staging.root.iterdir()] == ["adapter-000002"]  # earlier versions deleted
    merged = lora_learner(seed=7)
    WeightSync(fleet, "full", shared=True).sync(merged)  # the adapter merged, reloaded in place
    assert member.weight_version() == "full-3" and member.model_name == "tiny"
    assert served_gap(fleet.generate(PROMPTS, PARAMS), merged) < LOGPROB_ATOL
    assert served_gap(follower.generate(PROMPTS, PARAMS), merged) < LOGPROB_ATOL  # back to the base name
    WeightSync(fleet, "full", shared=True).sync(base)
    assert served_gap(fleet.generate(PROMPTS, PARAMS), base) < LOGPROB_ATOL


def test_refusals_stop_the_call_without_dropping_the_server(vllm_servers, tokenizer) -> None:
    fleet = connect(vllm_servers[0][1], tokenizer, max_prompt_tokens=8, prompt_truncation="error")
    with pytest.raises(RolloutServerError, match="adapter rank 16 is above vLLM server .* --max-lora-rank 8"):
        fleet.load_adapter(*adapter_weights(lora_learner(rank=16)))
    with pytest.raises(RolloutServerError, match="refused POST /v1/completions: HTTP 400: temperature must be in"):
        fleet.generate(["Hi"], SamplingParams(temperature=2.5, max_tokens=4))
    with pytest.raises(PromptTooLongError, match="longer than 8 tokens"):
        fleet.generate(PROMPTS, PARAMS)
    assert fleet.lost == {}
    assert len(fleet.generate(["Hi"], PARAMS)[0]) == 3
    align_kind = RolloutConfig(server_url=vllm_servers[0][1], server_kind="align")
    with pytest.raises(RolloutServerError, match="is not an `align serve-rollout` server .*rollout.server_kind: vllm"):
        build_server_engine(align_kind, tokenizer, uses_peft=False)


def test_a_vllm_kind_pointed_at_an_align_server_is_refused(tokenizer) -> None:
    from rollout.server import RolloutServer
    from rollout.transformers_engine import TransformersEngine

    align = RolloutServer(TransformersEngine(learner(), tokenizer), port=0).start()
    try:
        with pytest.raises(RolloutServerError, match="refused GET /v1/models: HTTP 404: no endpoint /v1/models"):
            connect(align.url, tokenizer, server_kind="vllm")
    finally:
        align.shutdown()


def test_seeded_samples_do_not_depend_on_the_split(vllm_servers, tokenizer, monkeypatch) -> None:
    prompts = [f"Question: Tell me about topic {i}.\nAnswer:" for i in range(6)]
    two = connect([url for _, url in vllm_servers], tokenizer)
    WeightSync(two, "full", shared=True).sync(learner())  # both servers hold the same weights
    one = connect(vllm_servers[1][1], tokenizer)
    split = two.generate(prompts, PARAMS)
    assert len(two.served_prompts) == 2
    monkeypatch.setitem(fleet_module.IN_FLIGHT, "vllm", 1)  # one request at a time: no batching at all
    whole = one.generate(prompts, PARAMS)
    for left, right in zip(split, whole):
        assert [s.completion_ids for s in left] == [s.completion_ids for s in right]
        for a, b in zip(left, right):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(s.completion_ids) for group in split for s in group}) > len(prompts)


def test_grpo_syncs_its_adapter_to_the_vllm_server_every_step(vllm_servers, tmp_path: Path) -> None:
    import json

    from alignment.cli import main

    url = vllm_servers[0][1]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(
        f"""
model: {{path: {TINY_POLICY}, dtype: float32}}
peft: {{enabled: true, r: 8, target_modules: [q_proj, v_proj]}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 8, server_url: [{json.dumps(url)}]}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 4}}}}
train: {{max_steps: 3, prompts_per_step: 2, num_generations: 2, save_steps: 3, report_to: [none], torch_threads: 1}}
"""
    )
    assert main(["train", str(recipe), "--output-dir", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["rollout/sync_seconds"] > 0 and r["rollout/servers_alive"] == 1 for r in records)
    member = VLLMServerClient(url, staging=None)  # type: ignore[arg-type]
    member.connect(probe_ids=[1])
    version = member.weight_version()  # one adapter per optimizer step
    assert version is not None and version.startswith("align-policy-") and version.endswith("-3"), version


def test_a_fleet_of_two_vllm_servers_loses_one(vllm_servers, tokenizer, caplog) -> None:
    """Runs last: kills the second server (its whole process group, as a crash would)."""
    two = connect([url for _, url in vllm_servers], tokenizer)
    first = lora_learner(seed=8)  # one object: lora_A comes from torch's global generator
    two.weight_sync.sync(first)
    assert served_gap(two.generate(PROMPTS, PARAMS), first) < LOGPROB_ATOL
    proc, url = vllm_servers[1]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="rollout"):
        groups = two.generate(PROMPTS * 3, PARAMS)
    assert [len(g) for g in groups] == [3] * 6
    assert served_gap(groups, first) < LOGPROB_ATOL
    address = url.removeprefix("http://")
    assert f"rollout fleet: server {address} is gone" in caplog.text and list(two.lost) == [address]
    second = lora_learner(seed=9)
    two.weight_sync.sync(second)  # reaches the server left
    assert set(two.last_sync_seconds) == {vllm_servers[0][1].removeprefix("http://")}
    assert served_gap(two.generate(PROMPTS, PARAMS), second) < LOGPROB_ATOL
