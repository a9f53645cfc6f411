"""A client of the rollout server (`align serve-rollout`): the RolloutEngine interface over HTTP + JSON.

Every request goes on a fresh connection, straight to the server (never through a proxy from the environment),
with the content type the server requires (`application/json`, or `application/octet-stream` for safetensors).
It is retried on connection failures, timeouts and 408/502/503/504 answers (503: the server is at its connection
or upload cap) with exponential backoff (`backoff_s`, doubling, at most `max_backoff_s`); after `retries` retries
it raises `ServerUnreachableError` (a `RolloutServerError`) naming host:port, the endpoint, the attempts and the
last error; a fleet (`rollout.fleet`) takes that as the server being gone. Other HTTP errors
(bad request, unauthorised, too large) are not retried: they raise at once with the server's one-line message,
also when the server answered before reading the whole body. Weight updates are sent as safetensors bytes, split
into requests of at most `chunk_bytes` and of at most what the server's /health says it accepts (each a partial
update).

The token (for a server bound beyond loopback) is sent as `Authorization: Bearer ...`; it is read from the
`token` argument or the ALIGN_ROLLOUT_TOKEN environment variable, never from a recipe.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rollout.base import Prompt, RolloutServerError, Sample, SamplingParams

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("rollout")


class ServerUnreachableError(RolloutServerError):
    """A rollout server did not answer (connection refused or reset, timeouts, 502/503/504) through every retry."""


TOKEN_ENV = "ALIGN_ROLLOUT_TOKEN"
RETRY_STATUS = (408, 502, 503, 504)


SEND_BLOCK = 2**20
HEADER_ALLOWANCE = 4096  # room for the safetensors header's fixed part and padding
TENSOR_HEADER_BYTES = 256  # more than one tensor's header entry takes, besides its name


def wait_before_retry(server: str, what: str, last_error: str, attempt: int, client: Any) -> None:
    """Log and sleep before retry `attempt` (1, 2, ...) of `what`: exponential backoff from `client.backoff_s`,
    doubling, capped at `client.max_backoff_s` (the clients' shared schedule; `client.retries` is the budget)."""
    delay = min(client.backoff_s * 2 ** (attempt - 1), client.max_backoff_s)
    logger.warning("%s: %s failed (%s); retry %d/%d in %.1fs", server, what, last_error, attempt, client.retries, delay)
    time.sleep(delay)


def parse_server_url(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL; ValueError naming what is wrong otherwise."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http":
        raise ValueError(f"{url!r}: must start with http:// (e.g. http://127.0.0.1:8000)")
    if not parsed.hostname:
        raise ValueError(f"{url!r}: has no host (e.g. http://127.0.0.1:8000)")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number in 1-65535") from None
    if port is None:
        raise ValueError(f"{url!r}: give the port explicitly (e.g. http://127.0.0.1:8000)")
    if parsed.path not in ("", "/") or parsed.query:
        raise ValueError(f"{url!r}: give only scheme, host and port (no path or query)")
    return parsed.hostname, port


class RemoteEngine:
    """Generates on a rollout server and pushes weight updates to it (see the module docstring)."""

    name = "remote"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        chunk_bytes: int = 512 * 2**20,
    ) -> None:
        self.host, self.port = parse_server_url(url)
        self.url = f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.chunk_bytes = chunk_bytes
        self._server_limits: dict[str, Any] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- transport -------------------------------------------------------------------------------------------
    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request on a fresh connection: (status, body). A server that answers before reading the whole body
        (401, 413, ...) closes its side; that answer is still read and returned."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body:
                view = memoryview(body)
                try:
                    for start in range(0, len(view), SEND_BLOCK):
                        conn.send(view[start : start + SEND_BLOCK])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server stopped reading: its answer (if it sent one) is read below
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> dict[str, Any]:
        headers = {"Accept": "application/json", "Connection": "close"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        start = time.monotonic()
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait_before_retry(f"rollout server {self.address}", f"{method} {path}", last_error, attempt, self)
            try:
                status, answer = self._exchange(method, path, body, headers)
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, unresolvable
                last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            if 200 <= status < 300:
                try:
                    return json.loads(answer or b"{}")
                except (ValueError, RecursionError) as err:
                    raise RolloutServerError(
                        f"rollout server {self.address} answered {method} {path} with something that is not JSON "
                        f"({err})"
                    ) from None
            message = _error_message(answer, status)
            if status not in RETRY_STATUS:
                raise RolloutServerError(
                    f"rollout server {self.address} refused {method} {path}: HTTP {status}: {message}"
                )
            last_error = f"HTTP {status}: {message}"
        raise ServerUnreachableError(
            f"rollout server {self.address} is unreachable: {method} {path} failed {self.retries + 1} times over "
            f"{time.monotonic() - start:.1f}s (last error: {last_error}). Is `align serve-rollout` running there "
            "(check rollout.server_url)?"
        )

    def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json.dumps(payload).encode("utf-8"), "application/json")

    # -- API -------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The server's /health answer: status, engine, model, weights version, limits (kept for later calls)."""
        answer = self._request("GET", "/health")
        limits = answer.get("limits")
        self._server_limits = limits if isinstance(limits, dict) else {}
        return answer

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Sample `params.n` completions per prompt on the server; same contract as every engine.

        Prompts go in as few requests as the server's limits allow (its /health gives the largest /generate body
        and the most completions per request). With a seed, request i > 0 of a split call uses seed + i, so the
        parts do not repeat each other's random draws."""
        prompts = list(prompts)
        groups: list[list[Sample]] = []
        for i, batch in enumerate(self._generate_batches(prompts, params)):
            part = params if i == 0 or params.seed is None else dataclasses.replace(params, seed=params.seed + i)
            answer = self._post_json("/generate", {"prompts": batch, "params": part.to_dict()})
            samples = answer.get("samples")
            if not isinstance(samples, list) or len(samples) != len(batch):
                raise RolloutServerError(
                    f"rollout server {self.address} returned "
                    f"{len(samples) if isinstance(samples, list) else 'no'} sample groups for {len(batch)} prompts"
                )
            groups += [[Sample.from_dict(s) for s in group] for group in samples]
        return groups

    def generate_one(self, prompt: Prompt, params: SamplingParams) -> list[Sample]:
        """`params.n` samples of one prompt in one request (a fleet's unit of work)."""
        return self.generate([prompt], params)[0]

    def alive(self) -> bool:
        """Whether the server answers /health now (one try, at most 10 s)."""
        probe = RemoteEngine(self.url, token=self.token, timeout_s=min(self.timeout_s, 10.0), retries=0)
        try:
            probe.health()
        except RolloutServerError:
            return False
        return True

    def _generate_batches(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Prompt]]:
        """`prompts` split so that each request's JSON and completions stay within the server's limits (one
        prompt that alone exceeds them is sent alone, and the server's refusal says why)."""
        limits = self.server_limits()
        max_bytes, max_sequences = limits.get("max_json_bytes"), limits.get("max_sequences")
        max_bytes = max_bytes if isinstance(max_bytes, int) and max_bytes > 0 else None
        per_request = (
            max(1, max_sequences // params.n) if isinstance(max_sequences, int) and max_sequences > 0 else None
        )
        if max_bytes is None and per_request is None:
            return [prompts]
        overhead = len(json.dumps({"prompts": [], "params": params.to_dict()}).encode("utf-8")) + 16
        batches: list[list[Prompt]] = [[]]
        size = overhead
        for prompt in prompts:
            cost = len(json.dumps(prompt).encode("utf-8")) + 2  # the prompt and its ", "
            full = max_bytes is not None and size + cost > max_bytes
            if batches[-1] and (full or (per_request is not None and len(batches[-1]) >= per_request)):
                batches.append([])
                size = overhead
            batches[-1].append(prompt)
            size += cost
        return batches

    def server_limits(self) -> dict[str, Any]:
        """The server's limits from its /health (`max_json_bytes`, `max_weights_bytes`, `max_sequences`), asked
        once (the first call of a fresh client costs one /health); empty when the server does not say."""
        if self._server_limits is None:
            self.health()
        return self._server_limits or {}

    def max_weights_bytes(self) -> int | None:
        """The largest safetensors body the server takes; None if it does not say."""
        value = self.server_limits().get("max_weights_bytes")
        return value if isinstance(value, int) and value > 0 else None

    def update_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Send full weights, split into requests of at most `chunk_bytes` (and of what the server accepts: its
        /health says how much); the server loads each part."""
        from rollout.weight_sync import to_safetensors_bytes

        server_limit = self.max_weights_bytes()
        limit = self.chunk_bytes
        if server_limit is not None:
            limit = min(limit, max(1, server_limit - HEADER_ALLOWANCE))
        for chunk in _chunks(tensors, limit):
            body = to_safetensors_bytes(chunk)
            if server_limit is not None and len(body) > server_limit:
                name = next(iter(chunk))
                raise RolloutServerError(
                    f"rollout server {self.address} takes at most {server_limit} bytes per update; {name} alone "
                    f"needs {len(body)} (is the server serving the same model as the learner?)"
                )
            self._request("POST", "/update_weights", body, "application/octet-stream")

    def load_adapter(self, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        """Send a LoRA adapter (tensors + config, one safetensors payload); the server generates with it."""
        from rollout.weight_sync import ADAPTER_CONFIG_KEY, to_safetensors_bytes

        body = to_safetensors_bytes(tensors, {ADAPTER_CONFIG_KEY: json.dumps(config)})
        self._request("POST", "/load_adapter", body, "application/octet-stream")


def _chunks(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Split into groups whose safetensors encoding (data plus a generous guess of each header entry) stays
    within `limit` bytes; a tensor larger than that goes alone."""
    chunks: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size() + TENSOR_HEADER_BYTES + len(name.encode("utf-8"))
        if chunks[-1] and size + nbytes > limit:
            chunks.append({})
            size = 0
        chunks[-1][name] = tensor
        size += nbytes
    return chunks


def _error_message(body: bytes, status: int) -> str:
    """The server's one-line `error`, else the start of the body, else the status's reason phrase."""
    try:
        return str(json.loads(body)["error"])
    except Exception:  # noqa: BLE001 - any other body: show its start
        text = " ".join(body[:300].decode("utf-8", "replace").split())
        if text:
            return text
        try:
            return http.HTTPStatus(status).phrase
        except ValueError:
            return "no message"
