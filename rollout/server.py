"""The rollout server: one engine (transformers or vLLM) behind a small HTTP + JSON API (`align serve-rollout`).

Endpoints (every answer is JSON; errors are `{"error": message}` with a 4xx/5xx status):
- `GET /health` -> `{"status": "ok", "engine", "model", "weights_version", "adapter"}`
- `POST /generate` with `{"prompts": [str | [messages]], "params": {n, temperature, top_p, top_k, max_tokens,
  stop, seed}}` -> `{"samples": [[{text, prompt_ids, completion_ids, logprobs, finish_reason}, ...], ...]}`
- `POST /update_weights` with safetensors bytes (full weights by Hugging Face name; a subset is fine)
- `POST /load_adapter` with safetensors bytes of a PEFT LoRA adapter, its LoraConfig as JSON in the
  safetensors metadata key `adapter_config`

Security: binds to 127.0.0.1 by default. Any other address needs `allow_remote=True` *and* a token; requests
must then carry `Authorization: Bearer <token>` (compared in constant time). A token can be set on loopback
too. Payloads are JSON or safetensors, never pickle. Requests are served on threads (so /health answers during
a long generation) but reach the engine one at a time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rollout.base import PromptRenderError, PromptTooLongError, RolloutEngine, SamplingParams
from rollout.weight_sync import ADAPTER_CONFIG_KEY, from_safetensors_bytes

logger = logging.getLogger("rollout.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_JSON_BYTES = 64 * 2**20


class HTTPError(Exception):
    """An error answer: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address) resolves to a loopback address only."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_binding(host: str, token: str | None, allow_remote: bool) -> None:
    """Refuse to listen beyond loopback without the explicit flag and a token (ValueError says what is missing)."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(
            f"binding to {host!r} exposes the rollout server beyond this machine; pass --allow-remote (and a token) "
            f"to do it on purpose, or keep the default {DEFAULT_HOST}"
        )
    if not token:
        raise ValueError(
            f"binding to {host!r} needs a token: put one in a file and pass --token-file, or set ALIGN_ROLLOUT_TOKEN"
        )


def _validate_prompts(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise HTTPError(400, "'prompts' must be a non-empty list of strings or chat message lists")
    for i, prompt in enumerate(value):
        if isinstance(prompt, str):
            continue
        if (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in prompt)
        ):
            continue
        raise HTTPError(400, f"prompts[{i}] must be a string or a list of {{role, content}} messages")
    return value


class RolloutServer:
    """Serves `engine` over HTTP (see the module docstring). `serve_forever()` blocks; `start()` runs it on a
    background thread (tests, benchmarks); `shutdown()` stops it."""

    def __init__(
        self,
        engine: RolloutEngine,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        allow_remote: bool = False,
        model_name: str | None = None,
        max_body_bytes: int = 16 * 2**30,
    ) -> None:
        check_binding(host, token, allow_remote)
        self.engine = engine
        self.token = token or None
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        self.weights_version = 0
        self.adapter: str | None = None
        self._engine_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> RolloutServer:
        """Serve on a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="rollout-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    # -- endpoint logic --------------------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        expected = f"Bearer {self.token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "engine": getattr(self.engine, "name", type(self.engine).__name__),
            "model": self.model_name,
            "weights_version": self.weights_version,
            "adapter": self.adapter,
        }

    def generate(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise HTTPError(400, "the body must be a JSON object with 'prompts' and 'params'")
        unknown = sorted(set(payload) - {"prompts", "params"})
        if unknown:
            raise HTTPError(400, f"unknown field {unknown[0]!r}; allowed: prompts, params")
        prompts = _validate_prompts(payload.get("prompts"))
        try:
            params = SamplingParams.from_dict(payload.get("params") or {})
        except (TypeError, ValueError) as err:
            raise HTTPError(400, f"params: {err}") from None
        with self._engine_lock:
            try:
                groups = self.engine.generate(prompts, params)
            except (PromptTooLongError, PromptRenderError) as err:
                raise HTTPError(400, str(err)) from None
        return {"samples": [[s.to_dict() for s in group] for group in groups]}

    def update_weights(self, body: bytes) -> dict[str, Any]:
        tensors, _ = self._tensors(body)
        update = getattr(self.engine, "update_weights", None)
        if update is None:
            raise HTTPError(501, f"the {self.health()['engine']} engine does not take weight updates")
        with self._engine_lock:
            try:
                update(tensors)
            except ValueError as err:
                raise HTTPError(400, f"update_weights: {err}") from None
            self.weights_version += 1
            self.adapter = None
        return {"ok": True, "tensors": len(tensors), "weights_version": self.weights_version}

    def load_adapter(self, body: bytes) -> dict[str, Any]:
        tensors, metadata = self._tensors(body)
        if ADAPTER_CONFIG_KEY not in metadata:
            raise HTTPError(400, f"load_adapter: the safetensors metadata has no {ADAPTER_CONFIG_KEY!r} (LoraConfig)")
        try:
            config = json.loads(metadata[ADAPTER_CONFIG_KEY])
        except json.JSONDecodeError as err:
            raise HTTPError(400, f"load_adapter: {ADAPTER_CONFIG_KEY} is not JSON ({err})") from None
        if not isinstance(config, dict):
            raise HTTPError(400, f"load_adapter: {ADAPTER_CONFIG_KEY} must be a JSON object")
        load = getattr(self.engine, "load_adapter", None)
        if load is None:
            raise HTTPError(501, f"the {self.health()['engine']} engine does not take adapters")
        with self._engine_lock:
            try:
                load(tensors, config)
            except ValueError as err:
                raise HTTPError(400, f"load_adapter: {err}") from None
            self.weights_version += 1
            self.adapter = f"v{self.weights_version}"
        return {"ok": True, "tensors": len(tensors), "weights_version": self.weights_version}

    @staticmethod
    def _tensors(body: bytes) -> tuple[dict[str, Any], dict[str, str]]:
        try:
            return from_safetensors_bytes(body)
        except ValueError as err:
            raise HTTPError(400, str(err)) from None


def _handler_for(server: RolloutServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Routes requests to the RolloutServer; every answer is JSON."""

        protocol_version = "HTTP/1.1"
        server_version = "align-rollout/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            logger.debug("%s - %s", self.address_string(), format % args)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self, limit: int) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                raise HTTPError(411, "Content-Length is required")
            try:
                size = int(length)
            except ValueError:
                raise HTTPError(400, "Content-Length is not a number") from None
            if size < 0 or size > limit:
                raise HTTPError(413, f"the body has {size} bytes; at most {limit} are accepted")
            return self.rfile.read(size)

        def _drain(self) -> None:
            """Read a small unwanted body so that the client sees the answer, not a reset; big ones are not read."""
            try:
                size = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return
            if 0 < size <= MAX_JSON_BYTES:
                self.rfile.read(size)

        def _handle(self, method: str) -> None:
            try:
                if not server.authorized(self.headers.get("Authorization")):
                    self._drain()
                    raise HTTPError(401, "missing or wrong token (send Authorization: Bearer <token>)")
                route = (method, self.path.split("?", 1)[0])
                if route == ("GET", "/health"):
                    self._send(200, server.health())
                elif route == ("POST", "/generate"):
                    try:
                        payload = json.loads(self._body(MAX_JSON_BYTES))
                    except (json.JSONDecodeError, UnicodeDecodeError) as err:
                        raise HTTPError(400, f"the body is not valid JSON ({err})") from None
                    self._send(200, server.generate(payload))
                elif route == ("POST", "/update_weights"):
                    self._send(200, server.update_weights(self._body(server.max_body_bytes)))
                elif route == ("POST", "/load_adapter"):
                    self._send(200, server.load_adapter(self._body(server.max_body_bytes)))
                elif route[1] in ("/health", "/generate", "/update_weights", "/load_adapter"):
                    raise HTTPError(405, f"{method} is not allowed on {route[1]}")
                else:
                    raise HTTPError(
                        404, f"no endpoint {route[1]}; try /health, /generate, /update_weights, /load_adapter"
                    )
            except HTTPError as err:
                self.close_connection = True
                self._send(err.status, {"error": err.message})
            except Exception as err:  # noqa: BLE001 - answer 500 with the cause instead of dropping the connection
                logger.exception("rollout server: %s %s failed", method, self.path)
                self.close_connection = True
                self._send(500, {"error": f"{type(err).__name__}: {err}"})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self._handle("POST")

    return Handler
