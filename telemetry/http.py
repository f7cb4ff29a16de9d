"""The service's HTTP endpoints on loopback: /metrics (Prometheus), /health (liveness), /ready.

/metrics negotiates as prometheus_client's own exposition does: OpenMetrics when Accept asks for it (as
Prometheus's scrapes do), else the text format 0.0.4; gzip when Accept-Encoding allows it.

Handlers answer from the health actor's latest published report, never by asking actors, so a
scrape cannot stall the tree and a stalled tree cannot stall a scrape.

One selector thread owns every socket: it accepts, reads request heads and writes answers, all
non-blocking; a small pool of workers only turns complete requests into bytes. So a client costs a
descriptor and a few KiB, never a thread: one that is slow to send its head (or sends none) is
dropped after `header_timeout_s`, an idle kept-alive one after `idle_timeout_s`, and beyond
`max_connections` the one waiting longest for its request makes room. A client going away is one
debug line; any other failure is an `event`, never a traceback on stderr.
"""
from __future__ import annotations

import gzip
import ipaddress
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

import orjson
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from marketfeed.telemetry.health_rules import liveness, readiness
from marketfeed.telemetry.logs import event
from marketfeed.telemetry.report import HealthReport

log = logging.getLogger("marketfeed.http")

# (report, monotonic time it was published) or None before the first report
ReportSource = Callable[[], "tuple[HealthReport, float] | None"]


@dataclass(frozen=True)
class Limits:
    """What local clients may take from the endpoint, however they behave."""
    max_connections: int = 256  # open client sockets (descriptors); a scraper needs one or two
    workers: int = 4  # threads turning complete requests into answers; the selector thread is one more
    header_timeout_s: float = 5.0  # connect (or a kept-alive connection's first byte) → end of the head
    idle_timeout_s: float = 15.0  # a kept-alive connection waiting for its next request
    write_timeout_s: float = 10.0  # an answer the client does not read
    max_head_bytes: int = 16384  # request line + headers
    backlog: int = 128  # connections the kernel completes before we accept them


LIMITS = Limits()
SWEEP_S = 0.25  # how often deadlines are checked: timeouts are this much late at most
CAP_WARNING_EVERY_S = 60.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') → (host, port); ValueError naming what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- the protocol, pure: bytes in, a request or a refusal out; an answer's bytes

class Refused(Exception):
    """A request answered with `status` and a closed connection."""

    def __init__(self, status: HTTPStatus, why: str):
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    keep_alive: bool  # the connection may carry another request after the answer
    accept: str = ""  # the Accept header: which exposition format /metrics answers in
    accept_encoding: str = ""  # the Accept-Encoding header: whether /metrics is gzipped


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: tuple[str, ...] = ()  # more header lines, "Name: value"


def split_head(inbox: bytearray, max_bytes: int) -> bytes | None:
    """Cut the first request head (without its blank line) off `inbox`; None while it is incomplete."""
    while inbox[:1] == b"\n" or inbox[:2] == b"\r\n":  # empty lines before a request line are ignored (RFC 9112 2.2)
        del inbox[: 1 if inbox[:1] == b"\n" else 2]
    end = _HEAD_END.search(inbox)
    if (end.start() if end else len(inbox)) > max_bytes:
        raise Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head over {max_bytes} bytes")
    if end is None:
        return None
    head = bytes(inbox[: end.start()])
    del inbox[: end.end()]
    return head


def parse_head(head: bytes) -> Request:
    """A request line and its headers (RFC 9112) → Request; Refused(400) naming what is wrong."""
    line, *fields = (raw.removesuffix("\r") for raw in head.decode("latin-1").split("\n"))
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise Refused(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise Refused(HTTPStatus.BAD_REQUEST, f"unsupported version {version[:16]!r}")
    headers: dict[str, str] = {}
    for field in fields:
        name, sep, value = field.partition(":")
        if not sep or not name or name != name.strip():  # also refuses obsolete line folding
            raise Refused(HTTPStatus.BAD_REQUEST, "malformed header field")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    has_body = "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"
    return Request(method, target.split("?", 1)[0], keep_alive and not has_body,  # a body is never read: close
                   headers.get("accept", ""), headers.get("accept-encoding", ""))


def exposition(registry: CollectorRegistry, accept: str, accept_encoding: str) -> Answer:
    """/metrics as prometheus_client's own servers answer it (exposition._bake_output): its choose_encoder picks
    the format from Accept, its gzip_accepted the compression from Accept-Encoding."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    vary = "Vary: Accept, Accept-Encoding"  # caches keep one answer per negotiated variant (RFC 9110 12.5.5)
    if gzip_accepted(accept_encoding):
        return Answer(200, content_type, gzip.compress(body), (vary, "Content-Encoding: gzip"))
    return Answer(200, content_type, body, (vary,))


def render(status: int, content_type: str, body: bytes, keep_alive: bool, head_only: bool = False,
           extra: tuple[str, ...] = ()) -> bytes:
    lines = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Date: {formatdate(usegmt=True)}",
             "Server: marketfeed", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             f"Connection: {'keep-alive' if keep_alive else 'close'}", *extra)
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (b"" if head_only else body)


def refusal(status: HTTPStatus, why: str) -> bytes:
    return render(status, "text/plain", f"{why}\n".encode(), keep_alive=False)


# --- the server: one selector thread for I/O, a bounded pool for answers

class _Conn:
    """One client socket; only the selector thread touches it."""
    __slots__ = ("deadline", "events", "idle", "inbox", "keep_alive", "outbox", "phase", "sock")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline
        self.inbox = bytearray()
        self.outbox = memoryview(b"")
        self.phase = "head"  # head: reading a request; busy: in a worker; send: writing the answer; closed
        self.idle = False  # kept alive and no byte of the next request yet: idle_timeout_s, not header_timeout_s
        self.keep_alive = False
        self.events = 0  # what the selector watches for


class OpsServer:
    def __init__(self, listen: str, latest: ReportSource, max_report_age_s: float, limits: Limits = LIMITS,
                 registry: CollectorRegistry = REGISTRY):
        self.latest, self.max_report_age_s, self.limits, self.registry = latest, max_report_age_s, limits, registry
        host, port = parse_listen(listen)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.listener = socket.create_server((host, port), family=family, backlog=limits.backlog)
        self.listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()  # workers → selector thread: an answer is ready
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accepting = True
        self._answers: queue.SimpleQueue[tuple[_Conn, bytes, bool]] = queue.SimpleQueue()
        self._conns: dict[_Conn, None] = {}
        self._waiting: dict[_Conn, None] = {}  # in phase head, longest waiting first: the first to make room
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="http-worker")
        self._stopping = False
        self._cap_warned_at = -CAP_WARNING_EVERY_S
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> OpsServer:
        host = self.listener.getsockname()[0]
        if not is_loopback(host):  # metrics and health have no authentication: say so when others can reach them
            event(log, "http_not_loopback", logging.WARNING, listen=f"{host}:{self.port}",
                  hint="/metrics, /health and /ready have no authentication; bind 127.0.0.1 or firewall the port")
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self.thread.is_alive():
            self._wake()
            self.thread.join(5.0)
        else:
            self._close_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def answer(self, request: Request) -> Answer:
        """The answer to a GET of `request.path`."""
        path = request.path
        if path == "/metrics":
            return exposition(self.registry, request.accept, request.accept_encoding)
        if path in ("/health", "/ready"):
            published = self.latest()
            report, age = (published[0], time.monotonic() - published[1]) if published else (None, 0.0)
            ok, detail = liveness(report, age, self.max_report_age_s) if path == "/health" else readiness(report)
            body = {"ok": ok, "detail": detail, "status": report.get("status") if report else None}
            return Answer(200 if ok else 503, "application/json", orjson.dumps(body))
        return Answer(404, "text/plain", b"not found: try /metrics, /health or /ready\n")

    # --- the selector thread

    def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_S
        try:
            while not self._stopping:
                for key, mask in self._selector.select(max(0.0, next_sweep - time.monotonic())):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._deliver_answers()
                    else:
                        self._io(key.data, mask)
                if (now := time.monotonic()) >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_S
        except Exception as exc:  # noqa: BLE001 - logged, not printed; the service runs on without HTTP
            event(log, "http_server_failed", logging.ERROR, exc_info=exc)
        finally:
            self._close_all()

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, so the connected clients' events are not starved
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors: try again at the next sweep rather than spin
                self._selector.unregister(self.listener)
                self._accepting = False
                event(log, "http_accept_failed", logging.WARNING, error=str(exc))
                return
            sock.setblocking(False)
            if len(self._conns) >= self.limits.max_connections and not self._make_room():
                self._refuse(sock)
                continue
            conn = _Conn(sock, time.monotonic() + self.limits.header_timeout_s)
            self._conns[conn] = self._waiting[conn] = None
            self._watch(conn, selectors.EVENT_READ)

    def _make_room(self) -> bool:
        """At the cap: close the connection waiting longest for its request; False when all are being answered."""
        now = time.monotonic()
        if now - self._cap_warned_at >= CAP_WARNING_EVERY_S:
            self._cap_warned_at = now
            event(log, "http_connection_cap_reached", logging.WARNING, max_connections=self.limits.max_connections,
                  hint="clients that connect and send no request are closed to make room")
        if not self._waiting:
            return False
        self._close(next(iter(self._waiting)), "evicted")
        return True

    def _refuse(self, sock: socket.socket) -> None:
        try:
            sock.send(refusal(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections"))
        except OSError:
            pass  # it went away or its buffer is full: the close says enough
        sock.close()

    def _io(self, conn: _Conn, mask: int) -> None:
        if conn.phase == "closed":
            return  # made room for a newcomer earlier in this round of events
        try:
            if mask & selectors.EVENT_READ:
                self._read(conn)
            if mask & selectors.EVENT_WRITE and conn.phase == "send":
                self._write(conn)
        except OSError as exc:  # reset, broken pipe: the client went away
            self._close(conn, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - one connection's failure is logged and ends only it
            event(log, "http_connection_failed", logging.ERROR, exc_info=exc)
            self._close(conn, "failed")

    def _read(self, conn: _Conn) -> None:
        data = conn.sock.recv(65536)
        if not data:
            self._close(conn, "client closed")
            return
        if conn.idle:
            conn.idle, conn.deadline = False, time.monotonic() + self.limits.header_timeout_s
        conn.inbox += data
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        try:
            head = split_head(conn.inbox, self.limits.max_head_bytes)
            if head is None:
                return
            request = parse_head(head)
        except Refused as refused:
            self._send(conn, refusal(refused.status, str(refused)), keep_alive=False)
            return
        conn.phase = "busy"
        self._waiting.pop(conn, None)
        self._watch(conn, 0)  # nothing to read until answered: a pipelined request waits in the kernel
        self._pool.submit(self._work, conn, request)

    def _deliver_answers(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass  # drained
        while True:
            try:
                conn, answer, keep_alive = self._answers.get_nowait()
            except queue.Empty:
                return
            if conn.phase != "busy":
                continue  # closed meanwhile (stopping)
            try:
                self._send(conn, answer, keep_alive)
            except OSError as exc:
                self._close(conn, type(exc).__name__)

    def _send(self, conn: _Conn, answer: bytes, keep_alive: bool) -> None:
        conn.phase, conn.keep_alive, conn.outbox = "send", keep_alive, memoryview(answer)
        conn.deadline = time.monotonic() + self.limits.write_timeout_s
        self._waiting.pop(conn, None)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        conn.outbox = conn.outbox[conn.sock.send(conn.outbox):]
        if conn.outbox:
            self._watch(conn, selectors.EVENT_WRITE)
        elif not conn.keep_alive:
            self._close(conn, "answered")
        else:
            conn.phase, conn.idle = "head", not conn.inbox
            conn.deadline = time.monotonic() + (self.limits.idle_timeout_s if conn.idle
                                                else self.limits.header_timeout_s)
            self._waiting[conn] = None
            self._watch(conn, selectors.EVENT_READ)
            self._next_request(conn)  # one pipelined with it may already be here

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self._conns if c.phase != "busy" and now >= c.deadline]:
            if conn.phase == "head" and conn.inbox:  # a request begun and not finished: say why it ends
                try:
                    conn.sock.send(refusal(HTTPStatus.REQUEST_TIMEOUT, "request head too slow"))
                except OSError:
                    pass  # it went away meanwhile: closing is all that is left
            self._close(conn, f"{conn.phase} timeout")
        if not self._accepting and not self._stopping:
            self._selector.register(self.listener, selectors.EVENT_READ, "accept")
            self._accepting = True

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if not conn.events:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn, why: str) -> None:
        if conn.phase == "closed":
            return
        self._watch(conn, 0)
        conn.sock.close()
        conn.phase = "closed"
        self._conns.pop(conn, None)
        self._waiting.pop(conn, None)
        event(log, "http_connection_closed", logging.DEBUG, why=why)

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn, "stopping")
        self._selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    # --- the workers

    def _work(self, conn: _Conn, request: Request) -> None:
        """In a pool thread: the answer's bytes, handed to the selector thread."""
        keep_alive = request.keep_alive and request.method in ("GET", "HEAD")
        try:
            if request.method in ("GET", "HEAD"):
                reply = self.answer(request)
                answer = render(reply.status, reply.content_type, reply.body, keep_alive,
                                head_only=request.method == "HEAD", extra=reply.headers)
            else:
                answer = render(405, "text/plain", b"only GET and HEAD\n", keep_alive, extra=("Allow: GET, HEAD",))
        except Exception as exc:  # noqa: BLE001 - a failing handler is a 500 and one log line, never a traceback
            event(log, "http_handler_failed", logging.ERROR, path=request.path, exc_info=exc)
            keep_alive = False
            answer = render(500, "text/plain", b"internal error\n", keep_alive)
        self._answers.put((conn, answer, keep_alive))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # a wake-up is already pending, or the server is closed
