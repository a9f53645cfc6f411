"""Attacks on `align serve-rollout`, made for real against a server on 127.0.0.1: stalled and trickled requests,
huge declared bodies, connection floods, cross-site browser writes, DNS rebinding, malformed HTTP and bad values.
Each test would have failed against the first server (http.server with a 16 GiB body limit and no timeouts).

Timeouts are set short on the servers under test; the sockets' own timeouts (30-60 s) only guard against a hang
and are never what a test measures. Numbers for RELIABILITY.md go to $RELIABILITY_REPORT (see fault_components).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fault_components import record_result
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.base import RolloutServerError, SamplingParams
from rollout.http_transport import ServerLimits
from rollout.remote_engine import RemoteEngine
from rollout.server import RolloutServer
from rollout.transformers_engine import TransformersEngine
from rollout.weight_sync import ADAPTER_CONFIG_KEY, WeightSync, to_safetensors_bytes

REPO = Path(__file__).resolve().parent.parent
TOKEN = "correct-horse-battery-staple"
HANG_GUARD_S = 60.0  # no answer within this is a hang (the servers here time out after 0.5-3 s)
JSON = "application/json"
OCTET = "application/octet-stream"
GENERATE = json.dumps({"prompts": ["Question: why?\nAnswer:"], "params": {"max_tokens": 4, "seed": 1}}).encode()


# -- raw HTTP -------------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def error(self) -> str:
        """The one-line error message (asserts the body is one line of JSON with an `error`)."""
        assert b"\n" not in self.body, self.body
        return json.loads(self.body)["error"]


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Reply(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body)


def read_reply(sock: socket.socket) -> Reply:
    """The server's answer (head, then Content-Length bytes or all until it closes); fails on a hang."""
    sock.settimeout(HANG_GUARD_S)
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            reply = parse_reply(data)
            if "content-length" in reply.headers and len(reply.body) >= int(reply.headers["content-length"]):
                return reply
        chunk = sock.recv(65536)
        if not chunk:
            return parse_reply(data)
        data += chunk


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_S)


def exchange(port: int, data: bytes) -> Reply:
    with connect(port) as sock:
        sock.sendall(data)
        return read_reply(sock)


def head(method: str, path: str, headers: dict[str, str] | None = None, *, host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path: str, body: bytes, content_type: str | None, **headers: str) -> bytes:
    fields = {"Content-Length": str(len(body)), **{k.replace("_", "-"): v for k, v in headers.items()}}
    if content_type:
        fields["Content-Type"] = content_type
    return head("POST", path, fields) + body


def answered_while_trickling(sock: socket.socket, piece: bytes, every_s: float, at_most: int) -> Reply | None:
    """Send `piece` every `every_s` seconds (each pause shorter than any per-read timeout) until the server
    answers (returns its reply) or `at_most` pieces were sent (None: the server waited for them all)."""
    for _ in range(at_most):
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            return read_reply(sock)
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return read_reply(sock)
    return None


# -- servers --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def serve(tiny_model_dir: Path, tokenizer) -> Iterator[Callable[..., tuple[RolloutServer, TransformersEngine]]]:
    """`serve(token=..., **limits)` starts a server with its own copy of the tiny model on a free port."""
    servers: list[RolloutServer] = []

    def start(
        token: str | None = None, spool_dir: str | None = None, **limits
    ) -> tuple[RolloutServer, TransformersEngine]:
        engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tokenizer)
        server = RolloutServer(engine, port=0, token=token, limits=ServerLimits(**limits), spool_dir=spool_dir)
        servers.append(server.start())
        return server, engine

    yield start
    for server in servers:
        server.shutdown()


def alive(server: RolloutServer, token: str | None = None) -> bool:
    return RemoteEngine(server.url, token=token, retries=0).health()["status"] == "ok"


def changed_weights(engine: TransformersEngine) -> dict[str, torch.Tensor]:
    return {"model.norm.weight": engine.model.state_dict()["model.norm.weight"] * 3 + 1}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- resources ------------------------------------------------------------------------------------------------
def test_huge_declared_bodies_are_refused_unread_and_stalled_clients_do_not_grow_memory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The probe's attack on a real `align serve-rollout` process: 8 connections declaring 60 MiB /generate
    bodies and 8 declaring 16 GiB weights get 413 at once; then 32 connections that send 2 MiB (or what the
    weights limit allows) and stall hold no more than a few MiB of the server's memory, are cut off after the
    body timeout with 408, and the server serves throughout."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the spooled bodies, removed with the test's folder
    cmd = [sys.executable, "-m", "alignment.cli", "serve-rollout", "--model", str(tiny_model_dir), "--port", "0"]
    cmd += ["--threads", "1", "--body-timeout", "3", "--max-connections", "48"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split()[0]
        port = int(url.rsplit(":", 1)[1])
        remote = RemoteEngine(url, retries=0)
        weights_limit = remote.health()["limits"]["max_weights_bytes"]
        remote.generate(["warm up"], SamplingParams(max_tokens=2))
        rss_start = rss_mib(proc.pid)

        # 1. Huge declared lengths: 413 from the head alone, while the client is still holding its body back.
        huge = []
        for path, size, kind in [("/generate", 60 * 2**20, JSON)] * 8 + [("/update_weights", 16 * 2**30, OCTET)] * 8:
            sock = connect(port)
            sock.sendall(head("POST", path, {"Content-Length": str(size), "Content-Type": kind}) + b"x" * 65536)
            huge.append(sock)
        for sock in huge:
            reply = read_reply(sock)
            sock.close()
            assert reply.status == 413 and "accepts at most" in reply.error, reply
        rss_after_huge = rss_mib(proc.pid)

        # 2. Slow bodies within the limits: part sent, then silence.
        stalled = []
        sent = 0
        for i in range(32):
            if i >= 2:
                path, size, kind = "/generate", 4 * 2**20, JSON
            else:  # two uploads: as many as the server receives at once
                path, size, kind = "/update_weights", weights_limit, OCTET
            part = min(2 * 2**20, size - 1)
            sock = connect(port)
            sock.sendall(head("POST", path, {"Content-Length": str(size), "Content-Type": kind}) + b"[" * part)
            sent += part
            stalled.append(sock)
        time.sleep(1.0)  # let the server take in what was sent
        rss_stalled = rss_mib(proc.pid)
        assert remote.health()["status"] == "ok"  # 32 stalled connections leave room under the cap of 48
        replies = [read_reply(sock) for sock in stalled]
        for sock in stalled:
            sock.close()
        assert all(r.status == 408 and "did not arrive in time" in r.error for r in replies), replies
        assert len(remote.generate(["still serving"], SamplingParams(max_tokens=2))[0]) == 1
        rss_end = rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    growth = max(rss_after_huge, rss_stalled, rss_end) - rss_start
    record_result(
        "server_memory_under_stalled_clients",
        {
            "rss_start_mib": round(rss_start, 1),
            "rss_after_16_huge_declared_mib": round(rss_after_huge, 1),
            "rss_with_32_stalled_mib": round(rss_stalled, 1),
            "bytes_sent_by_stalled_mib": round(sent / 2**20, 1),
            "rss_end_mib": round(rss_end, 1),
        },
    )
    # The stalled clients sent ~62 MiB; a server holding bodies in memory grows by that much (the first one
    # grew by 480 MiB under the probe's 8 connections). Bodies past 256 KiB go to a temporary file instead.
    assert growth < 24, (rss_start, rss_after_huge, rss_stalled, rss_end)


def test_request_heads_must_arrive_in_time_even_when_trickled(serve) -> None:
    server, _ = serve(header_timeout_s=1.0)
    with connect(server.port) as silent:  # connects, sends nothing
        reply = read_reply(silent)
    assert reply.status == 408 and "did not arrive within 1s" in reply.error
    with connect(server.port) as sock:  # slowloris: a header byte every 0.2 s resets any per-read timeout
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        reply = answered_while_trickling(sock, b"a", 0.2, at_most=150)
    assert reply is not None and reply.status == 408, reply
    assert alive(server)


def test_stalled_and_trickled_bodies_are_cut_off(serve) -> None:
    server, _ = serve(body_timeout_s=1.0, min_body_rate=1000.0)
    with connect(server.port) as sock:  # 100 of 5000 bytes, then silence
        sock.sendall(head("POST", "/generate", {"Content-Length": "5000", "Content-Type": JSON}))
        sock.sendall(b" " * 100)
        reply = read_reply(sock)
    assert reply.status == 408 and "100 of 5000 bytes received" in reply.error, reply
    with connect(server.port) as sock:  # 10 bytes every 0.2 s: never silent for 1 s, but 50 B/s < 1000 B/s
        sock.sendall(head("POST", "/generate", {"Content-Length": "5000", "Content-Type": JSON}))
        reply = answered_while_trickling(sock, b" " * 10, 0.2, at_most=500)
    assert reply is not None and reply.status == 408, reply
    assert alive(server)


def test_connections_past_the_cap_get_503_and_the_client_retries_through(serve) -> None:
    server, _ = serve(max_connections=4, header_timeout_s=2.0)
    idle = [connect(server.port) for _ in range(4)]
    time.sleep(0.3)  # the server has accepted them
    try:
        reply = exchange(server.port, head("GET", "/health"))
        assert reply.status == 503 and reply.headers["retry-after"] == "1" and "too many connections" in reply.error
        # The client backs off on 503 and gets through once the idle connections time out (408).
        remote = RemoteEngine(server.url, retries=8, backoff_s=0.25, max_backoff_s=1.0)
        assert remote.health()["status"] == "ok"
        assert all(read_reply(sock).status == 408 for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def test_at_most_max_uploads_bodies_are_received_at_once(serve) -> None:
    server, engine = serve(max_uploads=1, body_timeout_s=2.0)
    with connect(server.port) as first:
        first.sendall(head("POST", "/update_weights", {"Content-Length": "1000", "Content-Type": OCTET}))
        first.sendall(b"\0" * 10)
        time.sleep(0.3)
        body = to_safetensors_bytes(changed_weights(engine))
        reply = exchange(server.port, post("/update_weights", body, OCTET))
        assert reply.status == 503 and "uploads are already being received" in reply.error
        assert read_reply(first).status == 408
    assert exchange(server.port, post("/update_weights", body, OCTET)).status == 200


# -- authentication and limits before the body ----------------------------------------------------------------
def test_the_token_and_the_size_are_checked_before_any_body_is_read(serve) -> None:
    server, _ = serve(token=TOKEN)
    limit = server.max_weights_bytes
    bearer = f"Bearer {TOKEN}"
    octet = OCTET
    for headers, status, message in [
        ({"Content-Length": str(2**30), "Content-Type": octet}, 401, "missing or wrong token"),
        ({"Content-Length": str(16 * 2**30), "Content-Type": octet, "Authorization": bearer}, 413, f"at most {limit}"),
        ({"Content-Length": str(limit + 1), "Content-Type": octet, "Authorization": bearer}, 413, f"at most {limit}"),
        ({"Content-Length": str(4 * 2**20 + 1), "Content-Type": JSON, "Authorization": bearer}, 413, ""),
    ]:
        path = "/generate" if headers["Content-Type"] == JSON else "/update_weights"
        with connect(server.port) as sock:
            sock.sendall(head("POST", path, headers))  # the head only: the body is never sent
            reply = read_reply(sock)
        assert reply.status == status and message in reply.error, (headers, reply)
    # The client reads such early answers even while it is still sending a large body.
    for token, message in [("wrong-token-0123456789", "HTTP 401: missing or wrong token"), (TOKEN, "HTTP 413")]:
        remote = RemoteEngine(server.url, token=token, retries=0)
        with pytest.raises(RolloutServerError, match=message):
            remote._request("POST", "/update_weights", b"\0" * (limit + 32 * 2**20), octet)
    assert alive(server, TOKEN)


# -- cross-site browser requests, DNS rebinding ---------------------------------------------------------------
def test_cross_site_requests_cannot_change_the_weights(serve) -> None:
    server, engine = serve()
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    body = to_safetensors_bytes(changed_weights(engine))
    for content_type, headers, status in [
        ("text/plain", {"Origin": "http://evil.example"}, 403),  # what a page's fetch() can send without preflight
        ("text/plain", {}, 415),
        ("text/plain;charset=UTF-8", {}, 415),
        ("multipart/form-data; boundary=x", {}, 415),
        ("application/x-www-form-urlencoded", {}, 415),
        (None, {}, 415),
        ("application/octet-stream; x=1", {}, 415),
        (OCTET, {"Origin": "http://evil.example"}, 403),
        (OCTET, {"Origin": "null"}, 403),
        (OCTET, {"Origin": f"http://localhost:{server.port + 1}"}, 403),
        (OCTET, {"Sec-Fetch-Site": "cross-site"}, 403),
        (OCTET, {"Sec-Fetch-Site": "same-site"}, 403),
    ]:
        reply = exchange(server.port, post("/update_weights", body, content_type, **headers))
        assert reply.status == status, (content_type, headers, reply)
        assert "access-control-allow-origin" not in reply.headers
    reply = exchange(server.port, post("/generate", GENERATE, "text/plain"))
    assert reply.status == 415 and "Content-Type: application/json" in reply.error
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    reply = exchange(server.port, head("OPTIONS", "/update_weights", preflight))
    assert reply.status == 403 and "access-control-allow-origin" not in reply.headers
    assert server.weights_version == 0
    for name, tensor in engine.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    # The same payload from a non-browser client (no Origin), or from the server's own origin, is applied.
    own = post("/update_weights", body, OCTET, Origin=f"http://127.0.0.1:{server.port}")
    assert exchange(server.port, own).status == 200
    assert not torch.equal(engine.model.state_dict()["model.norm.weight"], before["model.norm.weight"])
    assert exchange(server.port, post("/generate", GENERATE, "application/json; charset=utf-8")).status == 200


def test_the_host_header_must_name_this_machine(serve) -> None:
    server, _ = serve()
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "10.0.0.1", "[::2]:80"):
        reply = exchange(server.port, head("GET", "/health", host=host))
        assert reply.status == 400 and "DNS rebinding" in reply.error, (host, reply)
    # Loopback names on any port (an SSH tunnel from another port) are this machine.
    for host in ("127.0.0.1", f"127.0.0.1:{server.port}", "localhost:9999", "LOCALHOST", "[::1]:8000", "app.localhost"):
        assert exchange(server.port, head("GET", "/health", host=host)).status == 200, host


# -- malformed requests -----------------------------------------------------------------------------------------
def _deep(depth: int) -> bytes:
    return b'{"prompts": ' + b"[" * depth + b"]" * depth + b"}"


MALFORMED: list[tuple[str, bytes]] = [
    ("garbage", b"garbage\r\n\r\n"),
    ("http/0.9", b"GET /health\r\n\r\n"),
    ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("no host", b"GET /health HTTP/1.1\r\n\r\n"),
    ("two hosts", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: localhost\r\n\r\n"),
    ("NUL in target", b"GET /hea\x00lth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    ("absolute target", head("GET", "http://127.0.0.1/health")),
    ("asterisk target", head("OPTIONS", "*")),
    ("unknown path", head("GET", "/admin")),
    ("PUT", head("PUT", "/update_weights", {"Content-Length": "0"})),
    ("DELETE", head("DELETE", "/generate")),
    ("HEAD", head("HEAD", "/generate")),
    ("GET with a body", head("GET", "/health", {"Content-Length": "5"}) + b"12345"),
    ("CL letters", head("POST", "/generate", {"Content-Length": "abc", "Content-Type": JSON})),
    ("CL negative", head("POST", "/generate", {"Content-Length": "-1", "Content-Type": JSON})),
    ("CL plus", head("POST", "/generate", {"Content-Length": "+5", "Content-Type": JSON})),
    ("CL 2 values", head("POST", "/generate", {"Content-Length": "5, 6", "Content-Type": JSON})),
    ("CL 10^30", head("POST", "/generate", {"Content-Length": "1" + "0" * 30, "Content-Type": JSON})),
    ("no CL", head("POST", "/generate", {"Content-Type": JSON})),
    (
        "chunked",
        head("POST", "/generate", {"Transfer-Encoding": "chunked", "Content-Type": JSON}) + b"5\r\nhello\r\n0\r\n\r\n",
    ),
    ("gzip TE", head("POST", "/generate", {"Transfer-Encoding": "gzip", "Content-Type": JSON})),
    ("TE and CL", head("POST", "/generate", {"Transfer-Encoding": "chunked", "Content-Length": "5"}) + b"0\r\n\r\n"),
    ("100 KiB header", head("GET", "/health", {"X-Big": "a" * 100_000})),
    ("40 KiB target", head("GET", "/health?" + "a" * 40_000)),
    ("expect", head("POST", "/generate", {"Content-Length": "2", "Content-Type": JSON, "Expect": "x"})),
    ("not JSON", post("/generate", b"{nope", JSON)),
    ("not UTF-8", post("/generate", b'{"prompts": ["\xff\xfe"]}', JSON)),
    ("NaN literal", post("/generate", b'{"prompts": ["a"], "params": {"temperature": NaN}}', JSON)),
    ("deep nesting", post("/generate", _deep(100_000), JSON)),
    ("huge int", post("/generate", b'{"prompts": ["a"], "params": {"n": ' + b"9" * 5000 + b"}}", JSON)),
    ("JSON list", post("/generate", b"[1, 2]", JSON)),
    ("empty body", post("/generate", b"", JSON)),
    ("bad prompt", post("/generate", b'{"prompts": [[{"role": "user", "content": 5}]]}', JSON)),
    ("empty prompt", post("/generate", b'{"prompts": [""]}', JSON)),
    ("lone surrogate", post("/generate", b'{"prompts": ["a\\ud800"]}', JSON)),
    ("seed overflow", post("/generate", b'{"prompts": ["a"], "params": {"seed": ' + b"9" * 30 + b"}}", JSON)),
    (
        "tiny temperature",
        post("/generate", b'{"prompts": ["a"], "params": {"temperature": 1e-300}}', JSON),
    ),
    ("infinite top_p", post("/generate", b'{"prompts": ["a"], "params": {"top_p": 1e999}}', JSON)),
    ("too many samples", post("/generate", b'{"prompts": ["a"], "params": {"n": 100000}}', JSON)),
    ("max_tokens", post("/generate", b'{"prompts": ["a"], "params": {"max_tokens": 100000000}}', JSON)),
    ("no chat template", post("/generate", b'{"prompts": [[{"role": "user", "content": "hi"}]]}', JSON)),
    ("garbage weights", post("/update_weights", b"\x08" + b"\0" * 7 + b"{}", OCTET)),
    ("short weights", post("/update_weights", b"\0\0", OCTET)),
    ("truncated body", head("POST", "/generate", {"Content-Length": "100", "Content-Type": JSON}) + b"{"),
]


def test_malformed_requests_get_one_line_4xx_and_the_server_lives(serve) -> None:
    server, _ = serve(header_timeout_s=2.0, body_timeout_s=1.0)
    outcomes = {}
    for name, raw in MALFORMED:
        reply = exchange(server.port, raw)
        outcomes[name] = reply.status
        assert 400 <= reply.status < 500, (name, reply)
        assert reply.error and len(reply.error) < 2100, name
    assert outcomes["100 KiB header"] == 431 and outcomes["chunked"] == 411 and outcomes["no CL"] == 411
    assert outcomes["HEAD"] == 405 and outcomes["unknown path"] == 404 and outcomes["truncated body"] == 408
    # A client that vanishes mid-head or mid-body leaves nothing behind.
    for raw in (
        b"GET /health HT",
        head("POST", "/generate", {"Content-Length": "100", "Content-Type": JSON}),
    ):
        with connect(server.port) as sock:
            sock.sendall(raw)
    assert alive(server)
    record_result("server_malformed_requests", {"requests": len(MALFORMED), "statuses": outcomes})


# -- bad values that reach the engine ---------------------------------------------------------------------------
def test_wrong_shapes_and_non_finite_weights_are_one_line_400s_and_change_nothing(serve) -> None:
    server, engine = serve()
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    norm = before["model.norm.weight"]
    nan = norm.clone()
    nan[0] = float("nan")
    inf = norm.clone()
    inf[-1] = float("inf")
    octet = OCTET
    cases = [
        ({"model.norm.weight": torch.zeros(3)}, "update_weights: 1 shape mismatch(es), e.g. model.norm.weight"),
        ({"model.norm.weight": nan}, "update_weights: model.norm.weight holds 1 NaN/inf value(s)"),
        ({"model.norm.weight": inf.half()}, "update_weights: model.norm.weight holds 1 NaN/inf value(s)"),
        ({"no.such.weight": torch.zeros(2)}, "update_weights: 1 unknown parameter name"),
    ]
    for tensors, message in cases:
        reply = exchange(server.port, post("/update_weights", to_safetensors_bytes(tensors), octet))
        assert reply.status == 400 and reply.error.startswith(message), reply
    adapter = to_safetensors_bytes({"x.lora_A.weight": torch.full((2, 2), float("nan"))}, {ADAPTER_CONFIG_KEY: "{}"})
    reply = exchange(server.port, post("/load_adapter", adapter, octet))
    assert reply.status == 400 and "NaN/inf" in reply.error
    reply = exchange(server.port, post("/load_adapter", to_safetensors_bytes({"a": torch.ones(1)}), octet))
    assert reply.status == 400 and "adapter_config" in reply.error
    for params, message in [('{"temperature": NaN}', "not valid JSON"), ('{"temperature": 1e-300}', "temperature")]:
        body = ('{"prompts": ["a"], "params": ' + params + "}").encode()
        reply = exchange(server.port, post("/generate", body, JSON))
        assert reply.status == 400 and message in reply.error, reply
    assert server.weights_version == 0
    for name, tensor in engine.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert len(RemoteEngine(server.url, retries=0).generate(["a"], SamplingParams(max_tokens=2))[0]) == 1


# -- the client against the limits ------------------------------------------------------------------------------
def test_weight_sync_fits_a_small_server_limit_through_spooled_files(serve, tiny_model_dir: Path, tmp_path) -> None:
    """A server taking at most 44 KiB per update, spooling every body past 2 KiB to a file: the client splits
    full weights to fit (learned from /health) and the served model ends up equal to the learner; an adapter
    goes through the spooled path too."""
    from peft import LoraConfig, get_peft_model

    spool = tmp_path / "spool"
    spool.mkdir()
    server, engine = serve(max_weights_bytes=44 * 1024, memory_spool_bytes=2048, spool_dir=str(spool))
    learner = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        for param in learner.parameters():
            param.add_(0.05 * torch.randn_like(param))
    remote = RemoteEngine(server.url, retries=0)  # default chunk_bytes 512 MiB
    stats = WeightSync(remote, "full", shared=True).sync(learner)
    assert stats.bytes > 2 * 44 * 1024
    assert server.weights_version >= 3  # one per part
    served = engine.model.state_dict()
    for name, param in learner.named_parameters():
        torch.testing.assert_close(served[name], param.detach(), atol=0, rtol=0, msg=name)
    peft_learner = get_peft_model(learner, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert WeightSync(remote, "adapter", shared=True).sync(peft_learner).bytes > 2048
    assert remote.health()["adapter"] is not None
    assert list(spool.iterdir()) == []  # every spooled body was removed


def test_generate_is_split_to_fit_the_servers_limits(serve, tokenizer) -> None:
    """A server taking at most 1 KiB of JSON and 4 completions per request: the client splits 7 prompts x n=2
    into requests that fit and returns every group in order; one prompt larger than the limit is refused in one
    line (413) naming the limit."""
    server, engine = serve(max_json_bytes=1024, max_sequences=4)
    calls: list[int] = []
    generate = engine.generate

    def counted(prompts, params):
        calls.append(len(prompts))
        return generate(prompts, params)

    engine.generate = counted
    remote = RemoteEngine(server.url, retries=0)
    prompts = [f"Question {i}: " + "tell me about bread and volcanoes. " * 4 for i in range(7)]
    groups = remote.generate(prompts, SamplingParams(n=2, max_tokens=3, seed=5))
    assert calls == [2, 2, 2, 1]  # 2 prompts x n=2 = the 4 completions a request may ask for
    assert [len(g) for g in groups] == [2] * 7
    assert [g[0].prompt_ids for g in groups] == [tokenizer(p)["input_ids"] for p in prompts]
    calls.clear()
    long_prompts = [f"Question {i}: " + "tell me about bread and volcanoes. " * 10 for i in range(5)]
    groups = remote.generate(long_prompts, SamplingParams(n=1, max_tokens=3))
    assert calls == [2, 2, 1]  # ~370 bytes each: 3 would not fit in 1 KiB
    budget = 256 - 3  # the tiny model's context minus max_tokens: longer prompts are cut from the left
    assert [g[0].prompt_ids for g in groups] == [tokenizer(p)["input_ids"][-budget:] for p in long_prompts]
    with pytest.raises(RolloutServerError, match=r"HTTP 413: the body has \d+ bytes; /generate accepts at most 1024"):
        RemoteEngine(server.url, retries=0).generate(["x" * 2000], SamplingParams(max_tokens=2))


def test_serve_rollout_refuses_bad_limit_flags_in_one_line(capsys) -> None:
    from alignment.cli import main

    for flag, value in [("--max-connections", "0"), ("--header-timeout", "nan"), ("--max-json-mib", "-1")]:
        assert main(["serve-rollout", "--model", "builtin:tiny-policy", flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err


def test_expect_100_continue_is_answered_once_the_head_passes(serve) -> None:
    """A client that waits for `100 Continue` (curl does, for large bodies) learns from the head alone whether
    to send its body: 100 then 200 when the head passes, the refusal at once when it does not."""
    server, _ = serve(token=TOKEN)
    fields = {"Content-Length": str(len(GENERATE)), "Content-Type": JSON, "Expect": "100-continue"}
    with connect(server.port) as sock:
        sock.sendall(head("POST", "/generate", {**fields, "Authorization": f"Bearer {TOKEN}"}))
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(GENERATE)
        assert read_reply(sock).status == 200
    with connect(server.port) as sock:
        sock.sendall(head("POST", "/generate", fields))
        assert read_reply(sock).status == 401


# -- fuzz: no request body makes the server answer 5xx ---------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _fuzz_payloads():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0, 1, -1, 1e-300, 1e308, 0.5, 255, 256, 10**6]),
        st.text(max_size=30),
    )
    json_values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    roles = st.sampled_from(["user", "system", "assistant", "tool", "", "x" * 50]) | st.text(max_size=10)
    parts = st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image", ""]), "text": st.text(max_size=10)}),
        max_size=2,
    )
    content = st.text(max_size=40) | parts | json_values
    message = st.fixed_dictionaries({"role": roles, "content": content}) | st.dictionaries(
        st.text(max_size=8), json_values, max_size=3
    )
    # Mostly well-formed requests (so the engine and the chat template see odd values), and some of any shape.
    good_prompt = st.text(min_size=1, max_size=60) | st.lists(
        st.fixed_dictionaries({"role": roles, "content": st.text(max_size=40)}), min_size=1, max_size=3
    )
    prompt = good_prompt | st.lists(message, max_size=3) | json_values
    prompts = st.lists(good_prompt, min_size=1, max_size=3) | st.lists(prompt, max_size=3) | json_values
    param_values = {
        "n": st.integers(1, 4) | st.integers(-2, 6) | scalars,
        "temperature": st.floats(0.01, 3) | st.floats(-1, 3) | scalars,
        "top_p": st.floats(0.01, 1) | st.floats(-0.5, 1.5) | scalars,
        "top_k": st.integers(0, 400) | st.integers(-3, 400) | scalars,
        "max_tokens": st.integers(1, 16) | scalars,
        "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3) | st.lists(st.text(max_size=5)) | scalars,
        "seed": st.integers(-(2**65), 2**65) | scalars,
    }
    params = st.fixed_dictionaries({}, optional=param_values) | st.fixed_dictionaries(
        {}, optional={**param_values, "bogus": scalars}
    )
    return st.fixed_dictionaries({"prompts": prompts}, optional={"params": params | json_values}) | json_values


@pytest.mark.slow
def test_fuzzed_generate_bodies_never_get_a_5xx(serve, tokenizer) -> None:
    """Random /generate bodies (valid shapes with random types and values, chat messages with odd roles and
    contents, a chat template that raises on unknown roles): every answer is 200 or a one-line 4xx."""
    import copy

    from hypothesis import HealthCheck, given, settings

    server, engine = serve()
    engine.tokenizer = copy.deepcopy(tokenizer)
    engine.tokenizer.chat_template = CHAT_TEMPLATE
    statuses: dict[int, int] = {}

    scale = int(os.environ.get("FUZZ_SCALE", "1"))  # as in test_fuzz.py: N times the cases, fresh random ones
    fuzz = settings(derandomize=scale == 1, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @settings(fuzz, max_examples=100 * scale)
    @given(_fuzz_payloads())
    def one(payload) -> None:
        body = json.dumps(payload).encode()
        reply = exchange(server.port, post("/generate", body, JSON))
        statuses[reply.status] = statuses.get(reply.status, 0) + 1
        assert reply.status == 200 or (400 <= reply.status < 500 and reply.error), (payload, reply)

    one()
    assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if k >= 400) > 0, statuses
    record_result("server_fuzzed_generate", {"cases": sum(statuses.values()), "statuses": statuses})
