"""Several rollout servers as one engine (`rollout.server_url` as a list): the prompts split over the servers give
the samples one server gives, a sync reaches every server, a server that dies is dropped with a warning and a
metric while its prompts go to the others, and the run stops in one line (checkpoints intact) when none is left.
Real `align serve-rollout` servers with the transformers engine on the tiny model: in this process for the fleet
checks, as killed processes for the GRPO run."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignment.errors import ConfigError
from alignment.recipes.loader import load_dataclass
from alignment.recipes.recipe import RolloutConfig
from rollout.base import RolloutServerError, Sample, SamplingParams
from rollout.factory import build_server_engine
from rollout.fleet import Fleet, _Shares, detect_kind, prompt_seed
from rollout.remote_engine import RemoteEngine
from rollout.server import RolloutServer
from rollout.transformers_engine import TransformersEngine
from rollout.weight_sync import WeightSync

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [f"Question: Tell me about {topic}.\nAnswer:" for topic in ("bread", "rivers", "owls", "salt", "snow")]
PARAMS = SamplingParams(n=2, max_tokens=8, temperature=0.8, seed=3)
LOGPROB_ATOL = 1e-4  # served vs teacher-forced logprobs, float32 on both sides


def teacher_forced(model: torch.nn.Module, sample: Sample, temperature: float) -> torch.Tensor:
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(sample.prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(sample.completion_ids)[:, None]).squeeze(-1)


def max_gap(model: torch.nn.Module, groups: list[list[Sample]]) -> float:
    return max(
        (torch.tensor(s.logprobs) - teacher_forced(model, s, PARAMS.temperature)).abs().max().item()
        for group in groups
        for s in group
    )


def lora_policy(model_dir: Path, seed: int) -> torch.nn.Module:
    """The tiny model with a random LoRA adapter (B non-zero, so it changes the outputs)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model_dir)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def pair(tiny_model_dir: Path, tokenizer) -> Iterator[list[tuple[RolloutServer, TransformersEngine]]]:
    """Two servers on free loopback ports, each with its own copy of the tiny model."""
    served = []
    for _ in range(2):
        engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tokenizer)
        served.append((RolloutServer(engine, port=0).start(), engine))
    yield served
    for server, _ in served:
        server.shutdown()


def fleet_of(servers: list[RolloutServer], tokenizer, *, uses_peft: bool = False) -> Fleet:
    settings = RolloutConfig(server_url=[s.url for s in servers], retries=1, retry_backoff_s=0.01)
    fleet = build_server_engine(settings, tokenizer, uses_peft=uses_peft)
    assert isinstance(fleet, Fleet)
    return fleet


def test_prompt_seeds_depend_on_the_step_seed_and_the_prompt_index_only() -> None:
    seeds = [prompt_seed(3, i) for i in range(1000)]
    assert seeds == [prompt_seed(3, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**31 for s in seeds)
    assert prompt_seed(4, 0) != prompt_seed(3, 0) and prompt_seed(-1, 0) == prompt_seed(2**63 - 1, 0)


def test_shares_deal_every_prompt_once_and_pass_on_a_dropped_servers_share() -> None:
    shares = _Shares(5, [0, 1])
    assert list(shares.queues[0]) == [0, 1] and list(shares.queues[1]) == [2, 3, 4]
    assert shares.take(1) == 2
    assert shares.drop(1) == 3  # its in-flight prompt 2 and queued 3, 4 go to server 0
    assert not shares.done(1, 2)  # a late answer from the dropped server does not count
    taken = []
    while (index := shares.take(0)) is not None:
        taken.append(index)
        assert shares.done(0, index)
    assert sorted(taken) == [0, 1, 2, 3, 4] and shares.remaining == 0
    stealing = _Shares(4, [0, 1])
    assert [stealing.take(1), stealing.take(0), stealing.take(0)] == [2, 0, 1]
    assert stealing.take(0) == 3  # server 1 is busy (1 request in flight, 1 worker): the end of its share
    assert stealing.drop(0) == 3 and stealing.drop(1) == 4 and stealing.stopped  # none left: everyone stops
    assert stealing.take(1) is None


def test_a_fleet_splits_the_prompts_over_its_servers(pair, tokenizer) -> None:
    """In-process servers share torch's global generator (the transformers engine seeds it), so that the samples
    do not depend on the split is checked with server processes, in the GRPO test below."""
    fleet = fleet_of([s for s, _ in pair], tokenizer)
    groups = fleet.generate(PROMPTS, PARAMS)
    served = fleet.served_prompts  # shares of 2 and 3, one may take the end of the other's
    assert len(served) == 2 and sum(served.values()) == len(PROMPTS) and min(served.values()) >= 1, served
    assert [len(g) for g in groups] == [2] * len(PROMPTS)
    for prompt, group in zip(PROMPTS, groups):  # in order, each with its own prompt
        assert all(s.prompt_ids == tokenizer(prompt)["input_ids"] for s in group)
    assert max_gap(pair[0][1].model, groups) < LOGPROB_ATOL


def test_each_sync_reaches_every_server_before_the_next_generation(pair, tokenizer, tiny_model_dir: Path) -> None:
    fleet = fleet_of([s for s, _ in pair], tokenizer, uses_peft=True)
    assert fleet.weight_sync.mode == "adapter" and fleet.weight_sync.shared
    adapted = lora_policy(tiny_model_dir, seed=1)
    fleet.weight_sync.sync(adapted)
    assert [RemoteEngine(s.url).health()["weights_version"] for s, _ in pair] == [1, 1]
    assert set(fleet.last_sync_seconds) == {m.address for m in fleet.members}
    assert max_gap(adapted, fleet.generate(PROMPTS, PARAMS)) < LOGPROB_ATOL  # both servers sampled with it
    merged = lora_policy(tiny_model_dir, seed=2)
    WeightSync(fleet, "full", shared=True).sync(merged)
    assert [RemoteEngine(s.url).health()["weights_version"] for s, _ in pair] == [2, 2]
    assert max_gap(merged, fleet.generate(PROMPTS, PARAMS)) < LOGPROB_ATOL


def test_a_dead_server_is_dropped_and_its_prompts_sampled_elsewhere(pair, tokenizer, caplog) -> None:
    fleet = fleet_of([s for s, _ in pair], tokenizer)
    expected = fleet_of([pair[0][0]], tokenizer).generate(PROMPTS, PARAMS)
    dead = pair[1][0]
    dead_address = dead.url.removeprefix("http://")
    dead.shutdown()
    with caplog.at_level(logging.WARNING, logger="rollout"):
        groups = fleet.generate(PROMPTS, PARAMS)
    assert [[s.completion_ids for s in g] for g in groups] == [[s.completion_ids for s in g] for g in expected]
    assert f"rollout fleet: server {dead_address} is gone" in caplog.text and "1 of 2 server(s) left" in caplog.text
    assert list(fleet.lost) == [dead_address] and "is unreachable" in fleet.lost[dead_address]
    metrics = fleet.step_metrics()
    assert metrics["rollout/servers_alive"] == 1 and metrics["rollout/servers_lost"] == 1
    assert 1 <= metrics["rollout/prompts_retried"] <= 3  # its share of 3, less what the other took meanwhile
    fleet.weight_sync.sync(pair[0][1].model)  # only the live server is synced
    assert set(fleet.last_sync_seconds) == {pair[0][0].url.removeprefix("http://")}
    pair[0][0].shutdown()
    with pytest.raises(RolloutServerError) as info:
        fleet.generate(PROMPTS, PARAMS)
    message = str(info.value)
    assert message.startswith("no rollout server left of 2 (") and len(message.splitlines()) == 1
    assert dead_address in message and pair[0][0].url.removeprefix("http://") in message


def test_a_refused_request_stops_the_call_and_drops_no_server(tiny_model_dir: Path, tokenizer) -> None:
    servers = []
    for _ in range(2):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        engine = TransformersEngine(model, tokenizer, max_prompt_tokens=12, prompt_truncation="error")
        servers.append(RolloutServer(engine, port=0).start())
    try:
        fleet = fleet_of(servers, tokenizer)
        with pytest.raises(RolloutServerError, match="HTTP 400: .*longer than 12 tokens"):
            fleet.generate([*PROMPTS, "word " * 40], PARAMS)
        assert fleet.lost == {}
        assert len(fleet.generate(["Hi"], PARAMS)[0]) == 2
    finally:
        for server in servers:
            server.shutdown()


def test_server_lists_and_kinds_are_validated(pair) -> None:
    url = pair[0][0].url
    ok = load_dataclass(RolloutConfig, {"server_url": [url, pair[1][0].url], "server_kind": "align"}, "rollout")
    assert ok.server_url == [url, pair[1][0].url]
    for data, message in [
        ({"server_url": [url, "127.0.0.1:9"]}, "rollout.server_url[1]: '127.0.0.1:9': must start with http://"),
        ({"server_url": [url, url]}, "rollout.server_url: lists a server twice"),
        ({"server_url": []}, "rollout.server_url: must name at least one server"),
        ({"server_url": [url, 8000]}, "matches none of the allowed types"),
        ({"server_kind": "tgi"}, "rollout.server_kind: 'tgi' is not allowed"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_dataclass(RolloutConfig, data, "rollout")
        assert message in str(info.value), str(info.value)
    assert detect_kind(url) == "align"

    class NotARolloutServer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b'{"status": "up"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), NotARolloutServer)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RolloutServerError, match="answers neither as `align serve-rollout`.*nor as a vLLM"):
            detect_kind(f"http://127.0.0.1:{other.server_address[1]}")
    finally:
        other.shutdown()


def _serve_rollout_process(model_dir: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "alignment.cli", "serve-rollout", "--model", str(model_dir), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    )
    line = proc.stdout.readline()  # printed once it listens
    assert "listening on http://127.0.0.1:" in line, line
    return proc, line.split("listening on ")[1].split()[0]


@pytest.mark.slow
def test_grpo_on_two_servers_survives_one_and_stops_cleanly_without_both(
    tmp_path: Path, tiny_model_dir: Path, capsys, caplog
) -> None:
    """GRPO samples from two `align serve-rollout` processes (adapter synced to both every step). One is killed
    after the first checkpoint: the run goes on with the other, logging the loss and counting it in metrics.jsonl.
    The other is killed after a later checkpoint: the run stops with one line, its checkpoints complete."""
    from fault_components import check_checkpoints, metrics_records

    from alignment.cli import main
    from alignment.learners.checkpointing import complete_checkpoints

    servers = [_serve_rollout_process(tiny_model_dir) for _ in range(2)]
    # Before training (same weights on both): the split does not change the samples of a seed.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    two = build_server_engine(RolloutConfig(server_url=[url for _, url in servers]), tokenizer, uses_peft=True)
    one = build_server_engine(RolloutConfig(server_url=[servers[1][1]]), tokenizer, uses_peft=True)
    split, whole = two.generate(PROMPTS, PARAMS), one.generate(PROMPTS, PARAMS)
    assert len(two.served_prompts) == 2
    for left, right in zip(split, whole):
        assert [s.completion_ids for s in left] == [s.completion_ids for s in right]
        for a, b in zip(left, right):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(s.completion_ids) for group in split for s in group}) > len(PROMPTS)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    recipe = tmp_path / "fleet.yaml"
    urls = json.dumps([url for _, url in servers])
    recipe.write_text(
        f"""
model: {{path: {tiny_model_dir}}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 6, server_url: {urls}, retries: 1, retry_backoff_s: 0.05}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 3}}}}
train: {{max_steps: 14, prompts_per_step: 4, num_generations: 2, save_steps: 2, report_to: [none], torch_threads: 1}}
"""
    )
    run_dir = tmp_path / "run"
    killed_at: list[int] = []

    def newest_step() -> int:
        checkpoints = complete_checkpoints(run_dir)
        return int(checkpoints[-1].name.split("-")[1]) if checkpoints else 0

    def kill_one_per_checkpoint() -> None:
        for (proc, _), wanted in zip(servers, (2, 6)):
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and newest_step() < wanted:
                time.sleep(0.02)
            killed_at.append(newest_step())
            proc.kill()

    killer = threading.Thread(target=kill_one_per_checkpoint, daemon=True)
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="rollout"):
            code = main(["train", str(recipe), "--output-dir", str(run_dir)])
        killer.join(timeout=30)
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait(timeout=10)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err[-5:]
    assert "align train: error: no rollout server left of 2 (" in err[-1], err[-1]  # after the progress bar
    first, second = (url.removeprefix("http://") for _, url in servers)
    assert f"rollout fleet: server {first} is gone" in caplog.text
    assert f"rollout fleet: server {second} is gone" in caplog.text
    records = metrics_records(run_dir)
    lost = [r["rollout/servers_lost"] for r in records]
    assert lost[0] == 0 and 1 in lost, lost  # steps ran on the second server alone after the first one died
    assert all(r["rollout/servers_alive"] == 2 - r["rollout/servers_lost"] for r in records)
    checkpoints = check_checkpoints(run_dir)  # every one complete and loadable
    assert killed_at[1] >= 6 and int(checkpoints[-1].name.split("-")[1]) >= 6, (checkpoints, killed_at)
    assert second in err[-1]
