"""The rollout server and its client: round trips with the transformers engine behind it, weight sync (full and
adapter only) seen in the served logprobs, tokens and binding, retries with backoff, and a GRPO run whose server
is killed mid-run (clear error, last checkpoint intact)."""

from __future__ import annotations

import json
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

from rollout.base import RolloutServerError, Sample, SamplingParams
from rollout.remote_engine import RemoteEngine
from rollout.server import RolloutServer, check_binding
from rollout.transformers_engine import TransformersEngine
from rollout.weight_sync import WeightSync

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Question: Tell me about bread.\nAnswer:", "Question: What is a volcano?\nAnswer:"]
PARAMS = SamplingParams(n=2, max_tokens=8, temperature=0.8, seed=3)
TOKEN = "correct-horse-battery-staple"


def teacher_forced(model: torch.nn.Module, sample: Sample, temperature: float) -> torch.Tensor:
    """log pi(completion | prompt) per token under `model` (the quantity Sample.logprobs carries)."""
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(sample.prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(sample.completion_ids)[:, None]).squeeze(-1)


def max_gap(model: torch.nn.Module, groups: list[list[Sample]]) -> float:
    """Largest |served logprob - model's teacher-forced logprob| over every sampled token."""
    gaps = [
        (torch.tensor(s.logprobs) - teacher_forced(model, s, PARAMS.temperature)).abs().max().item()
        for group in groups
        for s in group
    ]
    return max(gaps)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def served(tiny_model_dir: Path, tokenizer) -> Iterator[tuple[RolloutServer, TransformersEngine]]:
    """A server on a free loopback port with its own copy of the tiny model."""
    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tokenizer, batch_size=8)
    server = RolloutServer(engine, port=0, model_name="tiny").start()
    yield server, engine
    server.shutdown()


def client(server: RolloutServer, **kwargs) -> RemoteEngine:
    kwargs.setdefault("retries", 0)
    return RemoteEngine(server.url, **kwargs)


def test_generate_round_trip_matches_the_served_model(served, tokenizer) -> None:
    server, engine = served
    remote = client(server)
    health = remote.health()
    limits = health.pop("limits")
    assert health == {"status": "ok", "engine": "transformers", "model": "tiny", "weights_version": 0, "adapter": None}
    # The weights limit follows the served model: its values as float32, plus 1/8 and 1 MiB for the header.
    values = sum(t.numel() for t in engine.model.state_dict().values())
    assert limits == {
        "max_json_bytes": 4 * 2**20,
        "max_weights_bytes": 4 * values * 9 // 8 + 2**20,
        "max_sequences": 16384,
    }
    groups = remote.generate(PROMPTS, PARAMS)
    assert [len(g) for g in groups] == [2, 2]
    for prompt, group in zip(PROMPTS, groups):
        for sample in group:
            assert sample.prompt_ids == tokenizer(prompt)["input_ids"]
            assert len(sample.logprobs) == len(sample.completion_ids) >= 1
            assert sample.finish_reason in ("stop", "length")
    assert max_gap(engine.model, groups) < 1e-4
    # Same seed, same samples.
    assert [s.completion_ids for s in remote.generate(PROMPTS, PARAMS)[0]] == [s.completion_ids for s in groups[0]]


def test_bad_requests_fail_at_once_with_the_servers_message(served) -> None:
    server, _ = served
    remote = client(server, retries=3, backoff_s=5.0)  # a retry would make this test slow
    start = time.monotonic()
    with pytest.raises(RolloutServerError, match=r"HTTP 400: params: unknown sampling parameter 'tempp'"):
        remote._post_json("/generate", {"prompts": ["x"], "params": {"tempp": 1}})
    with pytest.raises(RolloutServerError, match="HTTP 400: 'prompts' must be a non-empty list"):
        remote._post_json("/generate", {"prompts": [], "params": {}})
    with pytest.raises(RolloutServerError, match="HTTP 400: not a safetensors payload"):
        remote._request("POST", "/update_weights", b"garbage", "application/octet-stream")
    with pytest.raises(RolloutServerError, match="HTTP 400: update_weights: 1 unknown parameter name"):
        remote.update_weights({"no.such.weight": torch.zeros(2)})
    with pytest.raises(RolloutServerError, match="HTTP 404: no endpoint /nope"):
        remote._request("GET", "/nope")
    with pytest.raises(RolloutServerError, match="HTTP 405"):
        remote._request("GET", "/generate")
    assert time.monotonic() - start < 4.0


def test_full_weight_sync_changes_the_served_logprobs(served, tiny_model_dir: Path) -> None:
    server, engine = served
    learner = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        for param in learner.parameters():
            param.add_(0.05 * torch.randn_like(param))
    before = client(server).generate(PROMPTS, PARAMS)
    assert max_gap(learner, before) > 1e-2  # the server still has the old weights

    remote = client(server, chunk_bytes=64 * 1024)  # several partial updates
    stats = WeightSync(remote, "full", shared=True).sync(learner)
    assert stats.mode == "full" and stats.tensors == len(list(learner.parameters())) and stats.bytes > 0
    after = remote.generate(PROMPTS, PARAMS)
    assert max_gap(learner, after) < 1e-4
    assert remote.health()["weights_version"] > 1  # one version per chunk


def test_adapter_only_sync_applies_the_lora_adapter(served, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    server, engine = served
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    learner = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    remote = client(server)
    sync = WeightSync(remote, "adapter", shared=True)
    for round_ in range(2):  # the second sync replaces the adapter's tensors
        with torch.no_grad():
            for name, param in learner.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.5 * torch.randn_like(param))
        assert max_gap(learner, remote.generate(PROMPTS, PARAMS)) > 1e-3, round_
        stats = sync.sync(learner)
        assert stats.mode == "adapter" and stats.tensors == 8  # 2 layers x 2 modules x (A, B)
        assert max_gap(learner, remote.generate(PROMPTS, PARAMS)) < 1e-4, round_
        assert remote.health()["adapter"] == f"v{round_ + 1}"

    # Adapter-only moves far fewer bytes than the merged full weights; a full sync then replaces the adapter,
    # and leaves the learner's own (unmerged) weights as they were.
    own = {n: p.detach().clone() for n, p in learner.named_parameters()}
    full = WeightSync(remote, "full", shared=True).sync(learner)
    assert full.bytes > 10 * stats.bytes
    assert remote.health()["adapter"] is None
    assert max_gap(learner, remote.generate(PROMPTS, PARAMS)) < 1e-4
    for name, param in learner.named_parameters():
        torch.testing.assert_close(param.detach(), own[name], atol=1e-6, rtol=0)


def test_a_token_is_required_and_checked(tiny_model_dir: Path, tokenizer) -> None:
    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tokenizer)
    server = RolloutServer(engine, port=0, token=TOKEN).start()
    try:
        for token in (None, "wrong-token-of-some-length"):
            with pytest.raises(RolloutServerError, match="HTTP 401: missing or wrong token"):
                client(server, token=token).health()
        with pytest.raises(RolloutServerError, match="HTTP 401"):
            client(server, token="nope").generate(PROMPTS, PARAMS)
        assert client(server, token=TOKEN).health()["status"] == "ok"
    finally:
        server.shutdown()


def test_binding_beyond_loopback_needs_the_flag_and_a_token() -> None:
    check_binding("127.0.0.1", None, False)
    check_binding("localhost", None, False)
    with pytest.raises(ValueError, match="--allow-remote"):
        check_binding("0.0.0.0", TOKEN, False)
    with pytest.raises(ValueError, match="needs a token"):
        check_binding("0.0.0.0", None, True)
    check_binding("0.0.0.0", TOKEN, True)


def test_serve_rollout_refuses_a_public_address_before_loading_anything(capsys) -> None:
    from alignment.cli import main

    assert main(["serve-rollout", "--model", "builtin:tiny-policy", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-remote" in err[0]


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then 200."""

    failures = 2
    seen = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen += 1
        status = 503 if type(self).seen <= type(self).failures else 200
        body = json.dumps({"error": "warming up"} if status == 503 else {"status": "ok"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_retries_back_off_exponentially_then_succeed_or_fail_clearly(monkeypatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr("rollout.remote_engine.time.sleep", delays.append)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        remote = RemoteEngine(f"http://127.0.0.1:{httpd.server_address[1]}", retries=4, backoff_s=0.5)
        assert remote.health() == {"status": "ok"}
        assert delays == [0.5, 1.0] and Flaky.seen == 3
    finally:
        httpd.shutdown()
        httpd.server_close()
    port = httpd.server_address[1]  # nothing listens there any more
    delays.clear()
    remote = RemoteEngine(f"http://127.0.0.1:{port}", retries=3, backoff_s=0.5, max_backoff_s=1.5)
    with pytest.raises(RolloutServerError) as info:
        remote.generate(PROMPTS, PARAMS)
    message = str(info.value)
    assert f"rollout server 127.0.0.1:{port} is unreachable" in message
    # A fresh client first asks the server's limits (GET /health), with the same retries.
    assert "GET /health failed 4 times" in message and "ConnectionRefusedError" in message
    assert delays == [0.5, 1.0, 1.5]


def test_server_url_is_validated() -> None:
    from rollout.remote_engine import parse_server_url

    assert parse_server_url("http://127.0.0.1:8000") == ("127.0.0.1", 8000)
    for bad, why in [
        ("https://x:1", "http://"),
        ("http://:80", "no host"),
        ("http://host", "port"),
        ("http://h:1/v1", "no path"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_server_url(bad)


def _start_server_process(model_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignment.cli", "serve-rollout", "--model", str(model_dir), "--port", "0"]
        + ["--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    line = proc.stdout.readline()  # printed once it listens
    assert "listening on http://127.0.0.1:" in line, line
    return proc, line.split("listening on ")[1].split()[0]


@pytest.mark.slow
def test_grpo_through_a_server_that_dies_mid_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """GRPO samples from `align serve-rollout` (adapter synced every step); the server is killed after the
    first checkpoint: the learner retries with backoff, then stops with an error naming host:port, and the
    checkpoint it had written stays complete."""
    from alignment.learners.checkpointing import COMPLETE_MARKER, complete_checkpoints
    from alignment.learners.run import run_training
    from alignment.recipes.recipe import load_recipe

    proc, url = _start_server_process(tiny_model_dir)
    try:
        remote = RemoteEngine(url, retries=0)
        assert remote.health()["engine"] == "transformers"
        assert len(remote.generate(PROMPTS[:1], PARAMS)[0]) == 2
        data = tmp_path / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        recipe_path = tmp_path / "remote.yaml"
        recipe_path.write_text(
            f"""
model: {{path: {tiny_model_dir}}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 6, server_url: "{url}", retries: 2, retry_backoff_s: 0.05}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 3}}}}
train: {{max_steps: 12, prompts_per_step: 2, num_generations: 2, save_steps: 2, report_to: [none], torch_threads: 1}}
"""
        )
        run_dir = tmp_path / "run"
        seen: dict[str, int] = {}

        def kill_after_first_checkpoint() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not complete_checkpoints(run_dir):
                time.sleep(0.02)
            seen["weights_version"] = RemoteEngine(url, retries=0).health()["weights_version"]
            proc.kill()

        killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
        killer.start()
        with pytest.raises(RolloutServerError) as info:
            run_training(load_recipe(recipe_path, [f"output_dir={run_dir}"]))
        killer.join(timeout=10)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    host_port = url.removeprefix("http://")
    assert f"rollout server {host_port} is unreachable" in str(info.value)
    assert "failed 3 times" in str(info.value)
    assert seen["weights_version"] >= 2  # one adapter sync per optimizer step, plus the initial one
    checkpoints = complete_checkpoints(run_dir)
    assert checkpoints and checkpoints[0].name == "checkpoint-2"
    marker = json.loads((checkpoints[0] / COMPLETE_MARKER).read_text())
    for name in marker["files"]:
        assert (checkpoints[0] / name).is_file(), name
    from safetensors.torch import load_file

    assert load_file(str(checkpoints[0] / "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_zero3_full_weights_reach_the_server(tmp_path: Path, tiny_model_dir: Path, tokenizer) -> None:
    """Two learner processes under ZeRO-3 (full fine-tuning, partitioned parameters) sample from one server:
    before each step's generation the gathered full weights are pushed once (by rank 0), so after the run the
    server holds exactly the weights of checkpoint-2 (the last update followed by a generation)."""
    import os
    import socket

    from safetensors.torch import load_file

    from alignment.learners.checkpointing import complete_checkpoints

    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tokenizer)
    server = RolloutServer(engine, port=0).start()
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    recipe = tmp_path / "zero3.yaml"
    recipe.write_text(
        f"""
model: {{path: {tiny_model_dir}}}
peft: {{enabled: false}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 6, server_url: "{server.url}", retries: 1}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 3}}}}
train: {{max_steps: 3, prompts_per_step: 2, num_generations: 2, save_steps: 2, learning_rate: 1.0e-2,
         deepspeed: {REPO / "configs" / "zero3.json"}, report_to: [none], torch_threads: 1}}
"""
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        master_port = sock.getsockname()[1]
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(master_port), "--module", "alignment.cli"]
    cmd += ["train", str(recipe), "--output-dir", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        health = client(server).health()
    finally:
        server.shutdown()
    assert health["weights_version"] == 3  # one full sync per step (steps 0, 1, 2), from rank 0 only
    checkpoint = complete_checkpoints(tmp_path / "run")[0]
    assert checkpoint.name == "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    served = dict(engine.model.named_parameters())
    compared = [name for name in saved if name in served]
    assert len(compared) == len(served)
    for name in compared:
        torch.testing.assert_close(served[name].detach(), saved[name].float(), atol=1e-6, rtol=0, msg=name)
    changed = 0
    original_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for name, param in original_model.named_parameters():
        changed += not torch.equal(param.detach(), served[name].detach())
    assert changed > 0  # the learner's updates reached the server


def test_train_stops_before_training_on_an_unreachable_server_or_adapter_sync_without_peft(
    tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    import socket

    from alignment.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": PROMPTS[0]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {tiny_model_dir}}}\ndata: {{train: {data}}}\n"
        "rewards: {objectives: [{name: r, component: repetition}]}\ntrain: {report_to: [none]}\n"
    )
    cases = [
        ([f"rollout.server_url=http://127.0.0.1:{port}", "rollout.retries=0"], f"127.0.0.1:{port} is unreachable"),
        (["peft.enabled=false", "rollout.weight_sync=adapter"], "rollout.weight_sync: adapter-only weight sync"),
    ]
    for i, (overrides, message) in enumerate(cases):
        argv = ["train", str(recipe), "--output-dir", str(tmp_path / f"run{i}")]
        assert main(argv + [a for o in overrides for a in ("--set", o)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("align train: error: ") and message in err[-1], err
