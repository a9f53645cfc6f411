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

Resources (`ServerLimits`): at most `max_connections` open connections (more get 503 at once); the request
head (at most `max_header_bytes`) must arrive within `header_timeout_s`; a body may stall at most
`body_timeout_s` and must average `min_body_rate` bytes/s beyond that (408 otherwise). A /generate body is at
most `max_json_bytes` and asks for at most `max_sequences` completions; a safetensors body is at most
`max_weights_bytes` (by default the served model's parameters as float32, plus 1/8 and 1 MiB) and at most
`max_uploads` are received at once. Bodies past `memory_spool_bytes` are spooled to a temporary file as they
arrive (removed once answered), so slow clients hold disk, not memory; parsing and the engine take one request
at a time. One request per connection. Requests are served on threads (so /health answers during a long
generation).

HTTP/1.1 framing (request line, headers, Content-Length) is parsed by h11; bad framing, chunked bodies, other
HTTP versions, oversize heads get a 4xx; a request that breaks the server gets a one-line 500 and the server
keeps serving.
"""

from __future__ import annotations

import contextlib
import hmac
import http
import ipaddress
import json
import logging
import math
import os
import socket
import socketserver
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from rollout.base import PromptTooLongError, RolloutEngine, SamplingParams
from rollout.weight_sync import ADAPTER_CONFIG_KEY, from_safetensors_bytes

logger = logging.getLogger("rollout.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MIB = 2**20
JSON_TYPE = "application/json"
SAFETENSORS_TYPE = "application/octet-stream"
# Fallback for an engine whose model size cannot be read (neither a torch module nor a folder of safetensors).
FALLBACK_WEIGHTS_BYTES = 16 * 2**30
MIN_TEMPERATURE = 1e-5  # sampling is greedy in effect below this (vLLM's cut too); far below, logits / T overflow
SERVER_NAME = "align-rollout/2"

ROUTES: dict[str, tuple[str, str | None]] = {  # path -> (method, content type of its body)
    "/health": ("GET", None),
    "/generate": ("POST", JSON_TYPE),
    "/update_weights": ("POST", SAFETENSORS_TYPE),
    "/load_adapter": ("POST", SAFETENSORS_TYPE),
}


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of the server: connections, time, bytes (see the module docstring)."""

    max_connections: int = 32
    max_uploads: int = 2
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate: float = 1 * MIB
    write_timeout_s: float = 60.0
    max_header_bytes: int = 32 * 1024
    max_json_bytes: int = 4 * MIB
    max_sequences: int = 16384
    max_weights_bytes: int | None = None
    memory_spool_bytes: int = 256 * 1024
    linger_bytes: int = 4 * MIB
    linger_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_uploads", "max_header_bytes", "max_json_bytes", "max_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("memory_spool_bytes", "linger_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("header_timeout_s", "body_timeout_s", "min_body_rate", "write_timeout_s", "linger_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.max_weights_bytes is not None and (
            not isinstance(self.max_weights_bytes, int) or self.max_weights_bytes < 1
        ):
            raise ValueError(f"max_weights_bytes must be a positive integer or None, got {self.max_weights_bytes!r}")

    def body_deadline_s(self, size: int) -> float:
        """Seconds a body of `size` bytes may take in all."""
        return self.body_timeout_s + size / self.min_body_rate


class HTTPError(Exception):
    """An error answer: HTTP status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _ClientGone(Exception):
    """The peer closed or reset the connection; there is nobody to answer."""


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


# -- checks on the request head -------------------------------------------------------------------------------
def _host_name(value: str) -> str:
    """The host part of a Host header (no port, no brackets, lower case, no trailing dot)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def host_allowed(host_header: str, bound_host: str) -> bool:
    """Whether a Host header names this machine: `localhost` (or a `.localhost` name), a loopback address, or the
    name the server was bound to. Ports are not compared, so SSH tunnels to another local port still work."""
    name = _host_name(host_header)
    if not name:
        return False
    if name in ("localhost", _host_name(bound_host)) or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = value.partition(";")
    params = {}
    for part in rest.split(";"):
        if part.strip():
            key, _, val = part.partition("=")
            params[key.strip().lower()] = val.strip().strip('"').lower()
    return kind.strip().lower(), params


def check_content_type(value: str | None, expected: str) -> None:
    """415 unless the body's media type is exactly `expected` (JSON may say charset=utf-8). The types a web page
    may send to another origin without a preflight (text/plain, forms) are thereby refused."""
    kind, params = _media_type(value or "")
    allowed_params = {"charset": "utf-8"} if expected == JSON_TYPE else {}
    if kind != expected or any(allowed_params.get(k) != v for k, v in params.items()):
        got = f"{value!r}" if value else "none"
        raise HTTPError(415, f"the body must be sent with Content-Type: {expected} (got {got})")


def check_not_cross_site(headers: dict[str, list[str]], own_origins: set[str]) -> None:
    """403 for a request a browser sends on behalf of another site (Origin not ours, Sec-Fetch-Site cross-site or
    same-site). Clients that are not browsers send neither header."""
    for origin in headers.get("origin", []):
        if origin.strip().lower() not in own_origins:
            raise HTTPError(403, f"cross-origin request refused (Origin: {origin[:100]})")
    for site in headers.get("sec-fetch-site", []):
        if site.strip().lower() not in ("same-origin", "none"):
            raise HTTPError(403, f"cross-site request refused (Sec-Fetch-Site: {site[:40]})")


def _validate_prompts(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise HTTPError(400, "'prompts' must be a non-empty list of strings or chat message lists")
    for i, prompt in enumerate(value):
        if isinstance(prompt, str):
            if not prompt:
                raise HTTPError(400, f"prompts[{i}] is empty")
            continue
        if (
            isinstance(prompt, list)
            and prompt
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and _is_content(m.get("content")) for m in prompt
            )
        ):
            continue
        raise HTTPError(400, f"prompts[{i}] must be a string or a list of {{role, content}} messages")
    return value


def _check_strings(payload: Any) -> None:
    """400 for a string the tokenizer cannot take: JSON allows lone UTF-16 surrogates (\\ud800), UTF-8 does not."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise HTTPError(400, f"the string {item[:40]!r} is not valid Unicode (a lone surrogate)") from None
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())


def _is_content(value: Any) -> bool:
    """A chat message's content: a string, or a list of typed parts ({"type": "text", "text": str}, ...)."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in value)


def _check_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise HTTPError(400, f"params: must be an object, got {type(params).__name__}")
    temperature = params.get("temperature")
    if (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE)
    ):
        raise HTTPError(400, f"params: temperature must be a finite number >= {MIN_TEMPERATURE}, got {temperature}")
    return params


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _one_line(message: str, limit: int = 2000) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_template_error(err: BaseException) -> bool:
    """A chat template that rejected the messages (jinja2 raises its own errors, not ValueError)."""
    return any(cls.__module__.startswith("jinja2") for cls in type(err).__mro__)


def _check_finite(tensors: dict[str, Any], what: str) -> None:
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise HTTPError(400, f"{what}: {name} holds {bad} NaN/inf value(s); non-finite weights are refused")


# -- request bodies -------------------------------------------------------------------------------------------
@dataclass
class Body:
    """A received body: in memory (`data`) or spooled to a temporary file (`path`)."""

    data: bytearray = field(default_factory=bytearray)
    path: str | None = None
    size: int = 0
    _file: Any = None

    @classmethod
    def for_size(cls, size: int, memory_limit: int, spool_dir: str | None) -> Body:
        if size <= memory_limit:
            return cls()
        # Closed (and so deleted) by `close`, after the request is answered.
        try:
            handle = tempfile.NamedTemporaryFile(prefix="align-rollout-body-", dir=spool_dir)  # noqa: SIM115
        except OSError as err:
            raise HTTPError(507, f"cannot create a file to receive the body in ({err.strerror or err})") from None
        return cls(path=handle.name, _file=handle)

    def write(self, chunk: bytes | bytearray) -> None:
        self.size += len(chunk)
        if self._file is None:
            self.data += chunk
            return
        try:
            self._file.write(chunk)
        except OSError as err:
            raise HTTPError(507, f"cannot spool the upload to {self.path} ({err.strerror or err})") from None

    def finish(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # deletes the temporary file
            self._file = None

    def json(self) -> Any:
        try:
            raw = bytes(self.data) if self.path is None else Path(self.path).read_bytes()
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise HTTPError(400, f"the body is not valid JSON ({_one_line(str(err), 200)})") from None

    def safetensors(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(tensors, metadata); 400 for anything that is not safetensors."""
        try:
            if self.path is None:
                return from_safetensors_bytes(bytes(self.data))
            return _safetensors_file(self.path)
        except ValueError as err:
            raise HTTPError(400, _one_line(str(err), 500)) from None


def _safetensors_file(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if size < 8:
        raise ValueError("not a safetensors payload (shorter than its 8-byte header length)")
    if int.from_bytes(head, "little") > size - 8:
        raise ValueError("not a safetensors payload (header length past the end)")
    try:
        with safe_open(path, framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"not a valid safetensors payload: {err}") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


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
        self.httpd = _ThreadingTCPServer(host, port, self)
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
        _check_strings(payload)
        prompts = _validate_prompts(payload.get("prompts"))
        try:
            params = SamplingParams.from_dict(_check_params(payload.get("params")))
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
            tensors, _ = body.safetensors()
            _check_finite(tensors, "update_weights")
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
            tensors, metadata = body.safetensors()
            if ADAPTER_CONFIG_KEY not in metadata:
                raise HTTPError(
                    400, f"load_adapter: the safetensors metadata has no {ADAPTER_CONFIG_KEY!r} (LoraConfig)"
                )
            try:
                config = json.loads(metadata[ADAPTER_CONFIG_KEY], parse_constant=_reject_constant)
            except (ValueError, RecursionError) as err:
                raise HTTPError(400, f"load_adapter: {ADAPTER_CONFIG_KEY} is not JSON ({err})") from None
            if not isinstance(config, dict):
                raise HTTPError(400, f"load_adapter: {ADAPTER_CONFIG_KEY} must be a JSON object")
            _check_finite(tensors, "load_adapter")
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
        connection = _Connection(sock, self.limits)
        try:
            answer = self._answer(connection)
        except HTTPError as err:
            answer = (err.status, {"error": _one_line(err.message)}, err.headers)
        except _ClientGone:
            answer = None
        except Exception as err:  # noqa: BLE001 - answer 500 in one line instead of dropping the connection
            logger.exception("rollout server: request failed")
            answer = (500, {"error": _one_line(f"{type(err).__name__}: {err}")}, {})
        try:
            if answer is not None:
                connection.respond(*answer)
        finally:
            connection.close()

    def _answer(self, connection: _Connection) -> tuple[int, dict[str, Any], dict[str, str]] | None:
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


class _Connection:
    """Blocking I/O on one socket with deadlines; h11 parses what arrives."""

    def __init__(self, sock: socket.socket, limits: ServerLimits) -> None:
        self.sock = sock
        self.limits = limits
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.answered = False

    def _receive(self, deadline: float, idle_s: float | None, what: str, most: int = 64 * 1024) -> None:
        wait = deadline - time.monotonic()
        if idle_s is not None:
            wait = min(wait, idle_s)
        if wait <= 0:
            raise HTTPError(408, what)
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(most)
        except TimeoutError:
            raise HTTPError(408, what) from None
        except OSError:
            raise _ClientGone from None
        self.parser.receive_data(data)

    def _next_event(self) -> Any:
        state = self.parser.their_state
        try:
            return self.parser.next_event()
        except h11.RemoteProtocolError as err:
            if state is h11.SEND_BODY:  # the peer closed before its whole body arrived
                raise _ClientGone from None
            status = err.error_status_hint if 400 <= err.error_status_hint < 500 else 400
            raise HTTPError(status, f"malformed request: {_one_line(str(err), 200)}") from None

    def read_head(self, deadline: float) -> h11.Request | None:
        """The request's head, or None when the peer closed without sending one."""
        timeout = self.limits.header_timeout_s
        room = self.limits.max_header_bytes + 1  # h11 refuses an unfinished head longer than the limit
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                # Read no further than one byte past the limit, so a whole head that is too long is refused too.
                received = len(self.parser.trailing_data[0])
                self._receive(
                    deadline,
                    None,
                    f"the request line and headers did not arrive within {timeout:g}s",
                    min(64 * 1024, max(1, room - received)),
                )
            elif isinstance(event, h11.Request):
                return event
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:
                raise HTTPError(400, "malformed request")

    def read_body(self, body: Body, length: int) -> None:
        """Receive exactly `length` bytes into `body`, within the body deadline and the longest silence."""
        if self.parser.they_are_waiting_for_100_continue:
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline_s = self.limits.body_deadline_s(length)
        deadline = time.monotonic() + deadline_s
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                self._receive(
                    deadline,
                    self.limits.body_timeout_s,
                    f"the body did not arrive in time: {body.size} of {length} bytes received (a body may stall at "
                    f"most {self.limits.body_timeout_s:g}s and take {deadline_s:.0f}s in all)",
                )
            elif isinstance(event, h11.Data):
                body.write(event.data)
            elif isinstance(event, h11.EndOfMessage):
                body.finish()
                return
            else:
                raise _ClientGone

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self.limits.write_timeout_s)
        try:
            self.sock.sendall(data)
        except OSError:
            raise _ClientGone from None

    def respond(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        if self.answered:
            return
        self.answered = True
        with contextlib.suppress(_ClientGone):
            self._send(_response_bytes(status, payload, headers or {}))

    def close(self) -> None:
        """Close; when a body was left unread, first linger (read and drop a bounded amount) so the client sees
        the answer rather than a connection reset."""
        try:
            if self.answered and self.parser.their_state not in (h11.DONE, h11.CLOSED, h11.MUST_CLOSE):
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + self.limits.linger_s
                dropped = 0
                while dropped < self.limits.linger_bytes and (wait := deadline - time.monotonic()) > 0:
                    self.sock.settimeout(wait)
                    chunk = self.sock.recv(64 * 1024)
                    if not chunk:
                        break
                    dropped += len(chunk)
        except OSError:
            pass
        finally:
            self.sock.close()


def _response_bytes(status: int, payload: dict[str, Any], headers: dict[str, str]) -> bytes:
    body = json.dumps(payload).encode("ascii")  # ensure_ascii: one line, no raw control bytes
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Server: {SERVER_NAME}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


_BUSY = _response_bytes(
    503, {"error": "too many connections to the rollout server; retry shortly"}, {"Retry-After": "1"}
)


class _ThreadingTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Accepts connections and serves each on a daemon thread, at most `max_connections` at once; past the cap a
    connection gets 503 from the accepting thread and is closed."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, owner: RolloutServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.owner = owner
        self.slots = threading.BoundedSemaphore(owner.limits.max_connections)
        super().__init__((host, port), socketserver.BaseRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            _refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.owner.handle_connection(request)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("rollout server: connection from %s failed", client_address)


def _refuse_busy(sock: socket.socket) -> None:
    """503 without blocking the accepting thread: read what already arrived, answer, close."""
    try:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sock.recv(64 * 1024)
        sock.send(_BUSY)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()
