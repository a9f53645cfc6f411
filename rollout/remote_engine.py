"""A client of the rollout server (`align serve-rollout`): the RolloutEngine interface over HTTP + JSON.

Every request is retried on connection failures, timeouts and 502/503/504 answers with exponential backoff
(`backoff_s`, doubling, at most `max_backoff_s`); after `retries` retries it raises `RolloutServerError` naming
host:port, the endpoint, the attempts and the last error. Other HTTP errors (bad request, unauthorised) are not
retried: they raise at once with the server's message. Weight updates are sent as safetensors bytes, split into
requests of at most `chunk_bytes` (each a partial update).

The token (for a server bound beyond loopback) is sent as `Authorization: Bearer ...`; it is read from the
`token` argument or the ALIGN_ROLLOUT_TOKEN environment variable, never from a recipe.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rollout.base import Prompt, RolloutServerError, Sample, SamplingParams

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("rollout")

TOKEN_ENV = "ALIGN_ROLLOUT_TOKEN"
RETRY_STATUS = (502, 503, 504)


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
        self.url = f"http://{self.host}:{self.port}"
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.chunk_bytes = chunk_bytes
        # Talk to the server directly: never through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- transport -------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        start = time.monotonic()
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                logger.warning(
                    "rollout server %s: %s %s failed (%s); retry %d/%d in %.1fs",
                    self.address,
                    method,
                    path,
                    last_error,
                    attempt,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
            request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code not in RETRY_STATUS:
                    raise RolloutServerError(
                        f"rollout server {self.address} refused {method} {path}: HTTP {err.code}: {message}"
                    ) from None
                last_error = f"HTTP {err.code}: {message}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                last_error = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
            except json.JSONDecodeError as err:
                raise RolloutServerError(
                    f"rollout server {self.address} answered {method} {path} with something that is not JSON ({err})"
                ) from None
        raise RolloutServerError(
            f"rollout server {self.address} is unreachable: {method} {path} failed {self.retries + 1} times over "
            f"{time.monotonic() - start:.1f}s (last error: {last_error}). Is `align serve-rollout` running there "
            "(check rollout.server_url)?"
        )

    def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json.dumps(payload).encode("utf-8"), "application/json")

    # -- API -------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The server's /health answer: status, engine, model, weights version."""
        return self._request("GET", "/health")

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Sample `params.n` completions per prompt on the server; same contract as every engine."""
        answer = self._post_json("/generate", {"prompts": list(prompts), "params": params.to_dict()})
        groups = answer.get("samples")
        if not isinstance(groups, list) or len(groups) != len(prompts):
            raise RolloutServerError(
                f"rollout server {self.address} returned {len(groups) if isinstance(groups, list) else 'no'} sample "
                f"groups for {len(prompts)} prompts"
            )
        return [[Sample.from_dict(s) for s in group] for group in groups]

    def update_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Send full weights (split into requests of at most `chunk_bytes`); the server loads each part."""
        from rollout.weight_sync import to_safetensors_bytes

        for chunk in _chunks(tensors, self.chunk_bytes):
            self._request("POST", "/update_weights", to_safetensors_bytes(chunk), "application/octet-stream")

    def load_adapter(self, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        """Send a LoRA adapter (tensors + config, one safetensors payload); the server generates with it."""
        from rollout.weight_sync import ADAPTER_CONFIG_KEY, to_safetensors_bytes

        body = to_safetensors_bytes(tensors, {ADAPTER_CONFIG_KEY: json.dumps(config)})
        self._request("POST", "/load_adapter", body, "application/octet-stream")


def _chunks(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    chunks: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if chunks[-1] and size + nbytes > limit:
            chunks.append({})
            size = 0
        chunks[-1][name] = tensor
        size += nbytes
    return chunks


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read()
        return str(json.loads(body).get("error", body.decode("utf-8", "replace")))
    except Exception:  # noqa: BLE001 - any unreadable body: fall back to the reason phrase
        return str(err.reason)
