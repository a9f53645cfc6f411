"""The rollout server: one engine (transformers or vLLM) behind a small HTTP + JSON API (`align serve-rollout`).

Endpoints (every answer is one line of JSON; errors are `{"error": message}` with a 4xx/5xx status):
- `GET /health` -> `{"status": "ok", "engine", "model", "weights_version", "adapter", "limits"}`
- `POST /generate` (`Content-Type: application/json`) with `{"prompts": [str | [messages]], "params": {n,
  temperature, top_p, top_k, max_tokens, stop, seed}}` -> `{"samples": [[{text, prompt_ids, completion_ids,
  logprobs, finish_reason}, ...], ...]}`
- `POST /update_weights` (`Content-Type: application/octet-stream`) with safetensors bytes (full weights by
  Hugging Face name; a subset is fine)
- `POST /load_adapter` (`Content-Type: application/octet-stream`) with safetensors bytes of a PEFT LoRA adapter,
  its LoraConfig as JSON in the safetensors metadata key `adapter_config`

Security: binds to 127.0.0.1 by default. Any other address needs `allow_remote=True` *and* a token; requests
must then carry `Authorization: Bearer <token>` (compared in constant time). A token can be set on loopback
too. Payloads are JSON or safetensors, never pickle. Every check below is made on the request head, before a
byte of the body is read:
- the Host header must name this machine (localhost, a loopback address, the bound name) when the server is
  bound to loopback, so a web page cannot reach it through DNS rebinding;
- browser cross-site requests are refused (an `Origin` header other than the server's own, `Sec-Fetch-Site`
  other than same-origin/none), and bodies must carry their exact content type, which a page cannot send to
  another origin without a CORS preflight that this server never grants;
- the token; then the endpoint, method and a `Content-Length` within the endpoint's limit (413 otherwise).

Resources, deadlines and framing are the transport's (`rollout.http_transport`, parsed by h11): a connection
cap, head and body deadlines, bodies spooled to disk past a size, one request per connection, a one-line 4xx
for bad framing and a one-line 500 (the server keeps serving) for a request that breaks it. A /generate body is
at most `max_json_bytes` and asks for at most `max_sequences` completions; a safetensors body is at most
`max_weights_bytes` (by default the served model's parameters as float32, plus 1/8 and 1 MiB) and at most
`max_uploads` are received at once; parsing and the engine take one request at a time, on threads (so /health
answers during a long generation).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import h11

from rollout.base import PromptTooLongError, RolloutEngine, SamplingParams
from rollout.http_transport import (
    JSON_TYPE,
    MIB,
    SAFETENSORS_TYPE,
    Body,
    ClientGone,
    Connection,
    HTTPError,
    ServerLimits,
    ThreadingServer,
    check_content_type,
    check_not_cross_site,
    host_allowed,
    one_line,
    reject_json_constant,
)
from rollout.request_payloads import body_safetensors, check_finite, check_params, check_strings, validate_prompts
from rollout.weight_sync import ADAPTER_CONFIG_KEY

logger = logging.getLogger("rollout.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Fallback for an engine whose model size cannot be read (neither a torch module nor a folder of safetensors).
FALLBACK_WEIGHTS_BYTES = 16 * 2**30

ROUTES: dict[str, tuple[str, str | None]] = {  # path -> (method, content type of its body)
    "/health": ("GET", None),
    "/generate": ("POST", JSON_TYPE),
    "/update_weights": ("POST", SAFETENSORS_TYPE),
    "/load_adapter": ("POST", SAFETENSORS_TYPE),
}


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


# -- limits derived from the served model ---------------------------------------------------------------------
def served_parameter_count(engine: Any, model_path: str | None = None) -> int | None:
    """Number of values the engine's model holds (every state-dict entry, tied names counted twice), read from
    the torch module when the engine holds one, else from the safetensors headers in its model folder (no tensor
    is loaded); None when neither is there."""
    import torch

    model = getattr(engine, "model", None)
    if isinstance(model, torch.nn.Module):
        return sum(t.numel() for t in model.state_dict().values())
    folder = getattr(engine, "model_path", None) or model_path
    if not folder or not Path(folder).is_dir():
        return None
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                total += sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())  # noqa: SIM118
        except Exception:  # noqa: BLE001 - an unreadable file: the size is unknown
            return None
    return total or None


def weights_limit(parameter_count: int | None) -> int:
    """Largest safetensors body accepted: every parameter as float32 (a learner may send float32 to a bf16
    server), plus 1/8 for tied names and extra tensors and 1 MiB for the header."""
    if parameter_count is None:
        return FALLBACK_WEIGHTS_BYTES
    return 4 * parameter_count + (4 * parameter_count) // 8 + MIB


def _is_template_error(err: BaseException) -> bool:
    """A chat template that rejected the messages (jinja2 raises its own errors, not ValueError)."""
    return any(cls.__module__.startswith("jinja2") for cls in type(err).__mro__)


# -- the server -----------------------------------------------------------------------------------------------
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
        limits: ServerLimits | None = None,
        spool_dir: str | None = None,
    ) -> None:
        check_binding(host, token, allow_remote)
        self.engine = engine
        self.token = token or None
        self.model_name = model_name
        self.limits = limits or ServerLimits()
        if self.limits.max_weights_bytes is not None:
            self.max_weights_bytes = self.limits.max_weights_bytes
        else:
            count = served_parameter_count(engine, model_name)
            self.max_weights_bytes = weights_limit(count)
            if count is None:
                logger.warning(
                    "rollout server: cannot read the served model's size; weight and adapter uploads may be up to "
                    "%d bytes each (set a limit with --max-weights-mib)",
                    self.max_weights_bytes,
                )
        self.spool_dir = spool_dir
        self.bound_host = host
        self.loopback = is_loopback(host)
        self.weights_version = 0
        self.adapter: str | None = None
        self._engine_lock = threading.Lock()
        self._uploads = threading.BoundedSemaphore(self.limits.max_uploads)
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingServer(host, port, self)
        port_now = self.port
        bound = f"[{host}]" if ":" in host else host
        self.own_origins = {f"http://{name}:{port_now}" for name in ("127.0.0.1", "localhost", "[::1]", bound)}

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
        return hmac.compare_digest((header or "").encode("utf-8", "replace"), expected)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "engine": getattr(self.engine, "name", type(self.engine).__name__),
            "model": self.model_name,
            "weights_version": self.weights_version,
            "adapter": self.adapter,
            "limits": {
                "max_json_bytes": self.limits.max_json_bytes,
                "max_weights_bytes": self.max_weights_bytes,
                "max_sequences": self.limits.max_sequences,
            },
        }

    def generate(self, request: Body | Any) -> dict[str, Any]:
        """Sample for a /generate body (a `Body`, or its parsed JSON); HTTPError 400 for what the client got wrong."""
        with self._engine_lock:  # parsed under the lock too: one request's objects in memory at a time
            payload = request.json() if isinstance(request, Body) else request
            prompts, params = self._generate_request(payload)
            try:
                groups = self.engine.generate(prompts, params)
            except PromptTooLongError as err:
                raise HTTPError(400, str(err)) from None
            except ValueError as err:
                raise HTTPError(400, f"generate: {err}") from None
            except Exception as err:
                if _is_template_error(err):
                    raise HTTPError(400, f"generate: the chat template rejected the messages ({err})") from None
                raise
        return {"samples": [[s.to_dict() for s in group] for group in groups]}

    def _generate_request(self, payload: Any) -> tuple[list[Any], SamplingParams]:
        if not isinstance(payload, dict):
            raise HTTPError(400, "the body must be a JSON object with 'prompts' and 'params'")
        unknown = sorted(map(str, set(payload) - {"prompts", "params"}))
        if unknown:
            raise HTTPError(400, f"unknown field {unknown[0]!r}; allowed: prompts, params")
        check_strings(payload)
        prompts = validate_prompts(payload.get("prompts"))
        try:
            params = SamplingParams.from_dict(check_params(payload.get("params")))
        except (TypeError, ValueError) as err:
            raise HTTPError(400, f"params: {err}") from None
        sequences = len(prompts) * params.n
        if sequences > self.limits.max_sequences:
            raise HTTPError(
                400,
                f"{len(prompts)} prompts x n={params.n} asks for {sequences} completions; "
                f"at most {self.limits.max_sequences} per request",
            )
        return prompts, params

    def update_weights(self, body: Body) -> dict[str, Any]:
        update = getattr(self.engine, "update_weights", None)
        if update is None:
            raise HTTPError(501, f"the {self.health()['engine']} engine does not take weight updates")
        with self._engine_lock:  # parsed under the lock too: one payload's tensors in memory at a time
            tensors, _ = body_safetensors(body)
            check_finite(tensors, "update_weights")
            try:
                update(tensors)
            except ValueError as err:
                raise HTTPError(400, f"update_weights: {err}") from None
            self.weights_version += 1
            self.adapter = None
        return {"ok": True, "tensors": len(tensors), "weights_version": self.weights_version}

    def load_adapter(self, body: Body) -> dict[str, Any]:
        load = getattr(self.engine, "load_adapter", None)
        if load is None:
            raise HTTPError(501, f"the {self.health()['engine']} engine does not take adapters")
        with self._engine_lock:
            tensors, metadata = body_safetensors(body)
            if ADAPTER_CONFIG_KEY not in metadata:
                raise HTTPError(
                    400, f"load_adapter: the safetensors metadata has no {ADAPTER_CONFIG_KEY!r} (LoraConfig)"
                )
            try:
                config = json.loads(metadata[ADAPTER_CONFIG_KEY], parse_constant=reject_json_constant)
            except (ValueError, RecursionError) as err:
                raise HTTPError(400, f"load_adapter: {ADAPTER_CONFIG_KEY} is not JSON ({err})") from None
            if not isinstance(config, dict):
                raise HTTPError(400, f"load_adapter: {ADAPTER_CONFIG_KEY} must be a JSON object")
            check_finite(tensors, "load_adapter")
            try:
                load(tensors, config)
            except ValueError as err:
                raise HTTPError(400, f"load_adapter: {err}") from None
            self.weights_version += 1
            self.adapter = f"v{self.weights_version}"
        return {"ok": True, "tensors": len(tensors), "weights_version": self.weights_version}

    # -- the request's head, checked before any of its body is read ---------------------------------------
    def check_head(self, request: h11.Request, headers: dict[str, list[str]]) -> tuple[str, int]:
        """Route and vet a request from its head alone; returns (path, body length). Raises HTTPError."""
        if request.http_version not in (b"1.0", b"1.1"):
            raise HTTPError(400, f"HTTP/{request.http_version.decode('latin-1')} is not served; use HTTP/1.1")
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        if not target.startswith("/"):
            raise HTTPError(400, "the request target must be a path such as /generate")
        hosts = headers.get("host", [])
        if self.loopback and hosts and not host_allowed(hosts[0], self.bound_host):
            raise HTTPError(
                400,
                f"Host {hosts[0][:100]!r} is not this server (refused against DNS rebinding); "
                "address it as 127.0.0.1 or localhost",
            )
        check_not_cross_site(headers, self.own_origins)
        auth = headers.get("authorization", [])
        if not self.authorized(auth[0] if len(auth) == 1 else None):
            raise HTTPError(
                401, "missing or wrong token (send Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"}
            )
        path = target.split("?", 1)[0]
        if path not in ROUTES:
            raise HTTPError(404, f"no endpoint {path[:100]}; try /health, /generate, /update_weights, /load_adapter")
        allowed, content_type = ROUTES[path]
        if method != allowed:
            raise HTTPError(405, f"{method[:20]} is not allowed on {path}; use {allowed}", {"Allow": allowed})
        if headers.get("transfer-encoding"):
            raise HTTPError(411, "send the body with a Content-Length (chunked transfer encoding is not accepted)")
        lengths = headers.get("content-length", [])
        length = int(lengths[0]) if lengths else 0  # h11 has checked that it is one non-negative integer
        if content_type is None:
            if length:
                raise HTTPError(400, f"{method} {path} takes no body")
            return path, 0
        if not lengths:
            raise HTTPError(411, f"POST {path} needs a Content-Length")
        check_content_type(",".join(headers.get("content-type", [])) or None, content_type)
        limit = self.limits.max_json_bytes if content_type == JSON_TYPE else self.max_weights_bytes
        if length > limit:
            raise HTTPError(413, f"the body has {length} bytes; {path} accepts at most {limit}")
        expect = headers.get("expect", [])
        if expect and [e.strip().lower() for e in expect] != ["100-continue"]:
            raise HTTPError(417, f"Expect: {expect[0][:40]} is not supported")
        return path, length

    # -- one connection -------------------------------------------------------------------------------------
    def handle_connection(self, sock: socket.socket) -> None:
        """Read one request, answer it, close. Never raises."""
        connection = Connection(sock, self.limits)
        try:
            answer = self._answer(connection)
        except HTTPError as err:
            answer = (err.status, {"error": one_line(err.message)}, err.headers)
        except ClientGone:
            answer = None
        except Exception as err:  # noqa: BLE001 - answer 500 in one line instead of dropping the connection
            logger.exception("rollout server: request failed")
            answer = (500, {"error": one_line(f"{type(err).__name__}: {err}")}, {})
        try:
            if answer is not None:
                connection.respond(*answer)
        finally:
            connection.close()

    def _answer(self, connection: Connection) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """(status, payload, headers) for the connection's request, or None when the peer closed at once. The
        upload slot and the spooled body are given back before the answer is sent, so a client's next request
        never finds them still taken."""
        request = connection.read_head(time.monotonic() + self.limits.header_timeout_s)
        if request is None:
            return None
        headers: dict[str, list[str]] = {}
        for name, value in request.headers:
            headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        path, length = self.check_head(request, headers)
        if path == "/health":
            connection.read_body(Body(), 0)
            return 200, self.health(), {}
        if path != "/generate" and not self._uploads.acquire(blocking=False):
            raise HTTPError(
                503,
                f"{self.limits.max_uploads} uploads are already being received; retry shortly",
                {"Retry-After": "1"},
            )
        body = None
        try:
            body = Body.for_size(length, self.limits.memory_spool_bytes, self.spool_dir)
            connection.read_body(body, length)
            if path == "/generate":
                return 200, self.generate(body), {}
            if path == "/update_weights":
                return 200, self.update_weights(body), {}
            return 200, self.load_adapter(body), {}
        finally:
            if body is not None:
                body.close()
            if path != "/generate":
                self._uploads.release()
