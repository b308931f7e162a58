"""HTTP for SendGrid: pooled keep-alive connections, and retries that never risk a second email.

Why not ``urllib3.PoolManager.urlopen`` or ``requests``: they swallow a connection reset while the
request is being written and then report whatever happens while reading the answer as the same
``ProtocolError``, so a caller cannot tell "SendGrid never got the request" (safe to retry) from
"SendGrid may have got it" (retrying could send the email twice). And their per-request CPU
(about 400 us through urllib3's connection and response classes, against about 90 us here, both
measured on loopback; see bench/bench_delivery.py) caps a 2-core worker near 1,000 sends/s. So we
keep one socket per connection (TLS through ``ssl`` with certificate and host name checks), write
each request with one ``sendall``, read answers with a small HTTP/1.1 reader, and drive the phases:

1. connect: refused, DNS failure, connect timeout, TLS failure -> :class:`NotSent`;
2. write the request: an error before the last byte was written -> :class:`NotSent` (the server
   cannot act on a request whose body it never fully received);
3. read the answer: a timeout, reset or close -> :class:`MaybeSent` (the request was written and
   may have been acted on).

A POST that ends in ``MaybeSent`` is never retried; its outcome is ``unknown``. GETs are
idempotent, so the read side retries them too. A reset that arrives once the last byte is
written is ``MaybeSent`` too: often the server dropped the request unread, but nothing on the
wire tells that apart from a front end or middlebox resetting after SendGrid took the mail. Idle
pooled connections the server has closed are detected and replaced before a request is written.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from urllib3.util.wait import wait_for_read

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_EMAIL = re.compile(r"[^\s@\[\]<>()\"',;:]+@[^\s@\[\]<>()\"',;:]+")  # SendGrid quotes addresses in some errors


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; ``X-RateLimit-Reset`` wins on 429 (capped by ``max_delay``).

    ``rng`` and ``sleep`` are injectable so tests are deterministic and do not wait.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time  # epoch seconds, compared with X-RateLimit-Reset

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return self.rng.uniform(0, ceiling) if self.jitter else ceiling

    def delay(self, attempt: int, status: int | None = None, headers: Mapping[str, str] | None = None) -> float:
        """The wait before the next attempt; on 429 until ``X-RateLimit-Reset`` when the server says."""
        if status == 429 and headers:
            reset = _header(headers, "X-RateLimit-Reset")
            try:
                wait = float(reset) - self.clock() if reset is not None else None
            except ValueError:
                wait = None
            if wait is not None and wait > 0:
                return min(wait, self.max_delay)
        return self.backoff(attempt)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


class TransportError(Exception):
    """A request that got no HTTP answer."""


class NotSent(TransportError):
    """The request was not completely written: SendGrid cannot have acted on it."""


class MaybeSent(TransportError):
    """The request was written but no answer came back: SendGrid may have acted on it."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body) if self.body else None

    def error_text(self) -> str:
        """SendGrid's error message(s) joined, or the status line when the body is not SendGrid's format."""
        try:
            data = self.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("errors"), list):
            parts = []
            for err in data["errors"]:
                if isinstance(err, dict):
                    text = str(err.get("message") or "")
                    if err.get("field"):
                        text = f"{err['field']}: {text}"
                    parts.append(text)
                else:
                    parts.append(str(err))
            if parts:
                return _EMAIL.sub("<address>", "; ".join(parts))
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Attempts:
    """What a retried call ended with: a reply (any status), or no reply and whether it may have been sent."""

    reply: Reply | None
    attempts: int
    maybe_sent: bool = False
    error: str | None = None


MAX_LINE = 65536
MAX_HEADERS = 100


class _Connection:
    """One keep-alive socket (TLS when https), its buffered reader, and when it was last used."""

    __slots__ = ("sock", "rfile", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.idle_since = time.monotonic()

    def close(self) -> None:
        for part in (self.rfile, self.sock):
            try:
                part.close()
            except OSError:
                pass


def _line(rfile, what: str) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong(what)
    return line


def read_response(rfile, method: str) -> tuple[int, dict[str, str], bytes, bool]:
    """One HTTP/1.x answer from ``rfile``: (status, headers, body, server closes the connection).

    Interim 1xx answers are skipped; the body is framed by chunked encoding, Content-Length, or
    the end of the connection. Raises ``http.client`` errors (RemoteDisconnected when the server
    hung up without a status line) or OSError.
    """
    while True:
        line = _line(rfile, "status line")
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise http.client.BadStatusLine(line[:80].decode("latin-1", "replace"))
        status = int(code)
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = _line(rfile, "header line")
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                raise http.client.IncompleteRead(b"", None)
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name.strip():
                raise http.client.BadStatusLine(f"malformed header line in a {status} answer")
            name, value = name.strip(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        else:
            raise http.client.HTTPException(f"more than {MAX_HEADERS} headers")
        if status >= 200 or status < 100:
            break
    lower = {k.lower(): v.lower() for k, v in headers.items()}
    tokens = {t.strip() for t in lower.get("connection", "").split(",")}
    will_close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    if method == "HEAD" or status in (204, 304):
        return status, headers, b"", will_close
    if "chunked" in lower.get("transfer-encoding", ""):
        return status, headers, _read_chunked(rfile), will_close
    if "content-length" in lower:
        try:
            length = int(lower["content-length"].split(",")[0])
        except ValueError:
            raise http.client.HTTPException("invalid Content-Length") from None
        body = rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise http.client.IncompleteRead(body, length - len(body))
        return status, headers, body, will_close
    return status, headers, rfile.read(), True  # delimited by the end of the connection


def _read_chunked(rfile) -> bytes:
    parts = []
    while True:
        size_line = _line(rfile, "chunk size").split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise http.client.IncompleteRead(b"".join(parts)) from None
        if size == 0:
            while _line(rfile, "trailer") not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise http.client.IncompleteRead(b"".join(parts) + chunk, size - len(chunk))
        parts.append(chunk)
        _line(rfile, "chunk end")


class HttpClient:
    """Keep-alive HTTP/1.1 connections to one host, at most ``pool_size`` open, reused LIFO by any thread.

    Each request is written with one ``sendall`` (request line, headers and body), so "not fully
    written" is exactly "sendall raised"; :func:`read_response` reads the answer.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout: float = 10.0,
        pool_size: int = 8,
        idle_timeout: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"SendGrid host must be an http(s) URL, got {base_url!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        self.base_path = parts.path
        host_header = self.hostname if ":" not in self.hostname else f"[{self.hostname}]"
        if self.port != default_port:
            host_header += f":{self.port}"
        for name, value in headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"header {name!r} contains a line break")
        self._fixed_headers = f"Host: {host_header}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context or (ssl.create_default_context() if self.scheme == "https" else None)
        self._idle: queue.LifoQueue[_Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False

    # --- connections ------------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        sock = socket.create_connection((self.hostname, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.hostname)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _checkout(self) -> _Connection | None:
        """An idle connection still open, or None (the caller connects)."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return None
            # An idle socket that is readable was closed (or broken) by the server: never reuse it.
            fresh = time.monotonic() - conn.idle_since < self.idle_timeout
            if fresh and not wait_for_read(conn.sock, timeout=0.0):
                return conn
            conn.close()

    def _checkin(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.put(conn)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            conn.close()

    # --- one request ------------------------------------------------------------------------------

    def url(self, path: str, query: Mapping[str, object] | None = None) -> str:
        target = self.base_path + path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        return target

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        query: Mapping[str, object] | None = None,
    ) -> Reply:
        """One attempt. Raises :class:`NotSent` or :class:`MaybeSent` when no HTTP answer came back."""
        if self._closed:
            raise RuntimeError("HTTP client is closed")
        target = self.url(path, query)
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        elif method in ("POST", "PUT", "PATCH"):
            head += "Content-Length: 0\r\n"
        data = (head + "\r\n").encode("latin-1") + (body or b"")
        with self._slots:
            conn = self._checkout()
            if conn is None:
                try:
                    conn = self._connect()
                except OSError as exc:  # refused, DNS, connect timeout, TLS handshake (ssl.SSLError)
                    raise NotSent(f"{method} {path}: could not connect: {_describe(exc)}") from exc
            try:
                conn.sock.settimeout(self.timeout)
                conn.sock.sendall(data)
            except OSError as exc:
                conn.close()
                raise NotSent(
                    f"{method} {path}: connection failed while writing the request: {_describe(exc)}"
                ) from exc
            try:
                status, headers, payload, will_close = read_response(conn.rfile, method)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                conn.close()
                raise MaybeSent(f"{method} {path}: no answer after the request was sent: {_describe(exc)}") from exc
            if will_close:
                conn.close()
            else:
                self._checkin(conn)
            return Reply(status, headers, payload)

    def call(
        self,
        method: str,
        path: str,
        policy: RetryPolicy,
        *,
        body: bytes | None = None,
        query: Mapping[str, object] | None = None,
        idempotent: bool = False,
        what: str = "",
    ) -> Attempts:
        """Retry 429/5xx and :class:`NotSent` (and, when ``idempotent``, :class:`MaybeSent`) per ``policy``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = self.request(method, path, body=body, query=query)
            except MaybeSent as exc:
                if not idempotent:
                    log.warning("%s: outcome unknown after attempt %d: %s", what or path, attempt, exc)
                    return Attempts(None, attempt, maybe_sent=True, error=str(exc))
                if attempt >= policy.max_attempts:
                    return Attempts(None, attempt, maybe_sent=False, error=str(exc))
                wait = policy.backoff(attempt)
                log.info("%s: attempt %d got no answer, retrying in %.2fs: %s", what or path, attempt, wait, exc)
            except NotSent as exc:
                if attempt >= policy.max_attempts:
                    return Attempts(None, attempt, error=str(exc))
                wait = policy.backoff(attempt)
                log.info("%s: attempt %d not sent, retrying in %.2fs: %s", what or path, attempt, wait, exc)
            else:
                if reply.status not in RETRYABLE_STATUSES or attempt >= policy.max_attempts:
                    return Attempts(reply, attempt, error=None if reply.status < 400 else reply.error_text())
                wait = policy.delay(attempt, reply.status, reply.headers)
                log.info("%s: attempt %d got HTTP %d, retrying in %.2fs", what or path, attempt, reply.status, wait)
            policy.sleep(wait)


def _describe(exc: BaseException) -> str:
    """The error's class and text; URLs and hosts only, never bodies (they hold addresses)."""
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
