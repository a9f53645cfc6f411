"""A small hardened HTTP/1.1 transport for the rollout server: one request per connection, parsed by h11, with
every limit a public-facing server needs (see `ServerLimits`): a connection cap, deadlines on the head and the
body, a minimum body rate, bodies spooled to a temporary file past a size, exact content types, Host and
cross-site checks, one-line JSON answers. `rollout.server` builds the rollout API on it.
"""

from __future__ import annotations

import contextlib
import http
import ipaddress
import json
import logging
import math
import socket
import socketserver
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h11

logger = logging.getLogger("rollout.server")

MIB = 2**20
JSON_TYPE = "application/json"
SAFETENSORS_TYPE = "application/octet-stream"
SERVER_NAME = "align-rollout/2"


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


class ClientGone(Exception):
    """The peer closed or reset the connection; there is nobody to answer."""


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


def reject_json_constant(name: str) -> Any:
    """`json.loads(parse_constant=...)`: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def one_line(message: str, limit: int = 2000) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            return json.loads(raw.decode("utf-8"), parse_constant=reject_json_constant)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise HTTPError(400, f"the body is not valid JSON ({one_line(str(err), 200)})") from None


class ConnectionHandler(Protocol):
    """What `ThreadingServer` serves connections for: the limits, and one blocking call per connection."""

    limits: ServerLimits

    def handle_connection(self, sock: socket.socket) -> None: ...


class Connection:
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
            raise ClientGone from None
        self.parser.receive_data(data)

    def _next_event(self) -> Any:
        state = self.parser.their_state
        try:
            return self.parser.next_event()
        except h11.RemoteProtocolError as err:
            if state is h11.SEND_BODY:  # the peer closed before its whole body arrived
                raise ClientGone from None
            status = err.error_status_hint if 400 <= err.error_status_hint < 500 else 400
            raise HTTPError(status, f"malformed request: {one_line(str(err), 200)}") from None

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
                raise ClientGone

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self.limits.write_timeout_s)
        try:
            self.sock.sendall(data)
        except OSError:
            raise ClientGone from None

    def respond(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        if self.answered:
            return
        self.answered = True
        with contextlib.suppress(ClientGone):
            self._send(response_bytes(status, payload, headers or {}))

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


def response_bytes(status: int, payload: dict[str, Any], headers: dict[str, str]) -> bytes:
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


_BUSY = response_bytes(
    503, {"error": "too many connections to the rollout server; retry shortly"}, {"Retry-After": "1"}
)


class ThreadingServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Accepts connections and serves each on a daemon thread, at most `max_connections` at once; past the cap a
    connection gets 503 from the accepting thread and is closed."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, owner: ConnectionHandler) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.owner = owner
        self.slots = threading.BoundedSemaphore(owner.limits.max_connections)
        super().__init__((host, port), socketserver.BaseRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            refuse_busy(request)
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


def refuse_busy(sock: socket.socket) -> None:
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
