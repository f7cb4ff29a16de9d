"""REST to the exchanges: one pooled keep-alive client per exchange host, shared by every feed of that host in the
process, asking within the host's policy (feeds/rest_policy.py). I/O only.

Every request has one deadline for connecting, sending and reading the whole answer: a watchdog shuts the
socket down when it passes, so neither a silent server nor one trickling its headers or body a byte a second
holds a thread longer. Answers are read in chunks up to a byte bound. Error texts never carry the request's
query (where an API key may be) and pass through the log scrubber.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from marketfeed.actors.feed_reader import SocketDeadline, tls_context
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import FeedProtocol, HttpRequest, MalformedFrame
from marketfeed.feeds.rest_policy import HostPolicy, HostRules, RestVerdict, VerdictKind
from marketfeed.telemetry.logs import event, scrub

log = logging.getLogger("marketfeed.rest")

READ_CHUNK = 64 << 10  # one socket read; the deadline and the byte bound are checked after each
POOL_CONNECTIONS = 4  # kept open per host: one per feed of the host is in flight at most, rarely more


@dataclass(frozen=True)
class RestLimits:
    attempts: int = 5  # requests per page before its failure is reported
    timeout_s: float = 10.0  # one request: connect, send, whole answer
    max_bytes: int = 16 << 20  # a bigger answer fails the page
    max_wait_s: float = 60.0  # a host that asks for a longer wait (a ban) fails the page now, saying how long
    ca_file: str = ""

    @classmethod
    def of(cls, feed: FeedConfig) -> RestLimits:
        return cls(max_bytes=feed.max_backfill_bytes, ca_file=feed.ca_file)


@dataclass(frozen=True)
class RestResult:
    verdict: RestVerdict  # OK, or why the request was given up
    body: bytes = b""  # OK: the answer
    retry_after_s: float = 0.0  # given up: how long the exchange asked us to wait from now (0: it asked nothing)


class Cancelled(Exception):
    """The caller's cancel event was set while a request waited for its turn."""


class _DeadlineExceeded(OSError):
    pass


def fetch(request: HttpRequest, protocol: FeedProtocol, limits: RestLimits, cancel: threading.Event) -> RestResult:
    """GET `request` from its host within the host's policy, retrying what the exchange says is worth it up
    to limits.attempts. Raises Cancelled, and MalformedFrame for an answer above limits.max_bytes."""
    return host_client(request.url, protocol).fetch(request, protocol, limits, cancel)


class HostClient:
    """One exchange host (scheme, name, port): its policy, and a connection pool per CA file."""

    def __init__(self, scheme: str, host: str, port: int, rules: HostRules):
        self.scheme, self.host, self.port = scheme, host, port
        self.origin = f"{scheme}://{host}:{port}"
        self.policy = HostPolicy(rules)
        self._lock = threading.Lock()  # the policy's, and the pools'
        self._pools: dict[str, HTTPConnectionPool] = {}

    def fetch(self, request: HttpRequest, protocol: FeedProtocol, limits: RestLimits,
              cancel: threading.Event) -> RestResult:
        weight = protocol.request_weight(request)
        last: RestVerdict | None = None
        attempt = 0
        while True:
            with self._lock:
                now = time.time()
                delay = self.policy.delay_s(now, weight)
                if not delay:
                    self.policy.sent(now, weight)
                blocker = self.policy.blocker if self.policy.imposed_s(now) else None
            if delay > limits.max_wait_s:
                return RestResult(last or blocker or RestVerdict(VerdictKind.RETRY, delay, "request budget spent"),
                                  retry_after_s=delay)
            if delay:
                if cancel.wait(delay):
                    raise Cancelled
                continue
            attempt += 1
            try:
                status, headers, body = self._get(request, limits)
                verdict = protocol.rest_verdict(status, headers, body)
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                headers, body = {}, b""
                verdict = RestVerdict(VerdictKind.RETRY, 0.0, self._describe(exc, request))
            with self._lock:
                self.policy.observe(time.time(), headers, verdict)
                imposed = self.policy.imposed_s(time.time())
            if verdict.kind is VerdictKind.OK:
                return RestResult(verdict, body)
            if verdict.kind is VerdictKind.FAILED or attempt >= limits.attempts:
                return RestResult(verdict, retry_after_s=imposed)
            last = verdict
            event(log, "rest_retry", logging.WARNING, host=self.origin, path=urlsplit(request.url).path,
                  attempt=attempt, kind=str(verdict.kind), retry_after_s=verdict.retry_after_s,
                  reason=scrub(verdict.reason))

    def _get(self, request: HttpRequest, limits: RestLimits) -> tuple[int, dict[str, str], bytes]:
        """One GET: (status, headers with lower-case names, body) within limits.timeout_s."""
        url = urlsplit(request.url)
        deadline = time.monotonic() + limits.timeout_s
        watchdog = _watch.dog = SocketDeadline(deadline)
        response = None
        try:
            response = self._pool(limits.ca_file).urlopen(
                "GET", f"{url.path}?{url.query}" if url.query else url.path or "/", headers=dict(request.headers),
                retries=False, redirect=False, preload_content=False, release_conn=False,
                timeout=urllib3.Timeout(connect=limits.timeout_s, read=limits.timeout_s))
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(READ_CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:  # not retried: the next answer would be as big
                    raise MalformedFrame(f"REST response above max_backfill_bytes ({limits.max_bytes})",
                                         b"".join(chunks)[:200])
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded
                chunks.append(chunk)
            watchdog.cancel()
            if watchdog.fired:  # the socket was shut under the reader: what it read may look complete, is not
                raise _DeadlineExceeded
            status, headers = response.status, {name.lower(): value for name, value in response.headers.items()}
            response.release_conn()  # read to the end: the connection stays open for the next request
            response = None
            return status, headers, b"".join(chunks)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            if watchdog.fired or isinstance(exc, _DeadlineExceeded):
                raise _DeadlineExceeded(f"no complete answer within {limits.timeout_s} s") from None
            raise
        finally:
            watchdog.cancel()
            _watch.dog = None
            if response is not None:  # not read to the end: the connection cannot serve another request
                response.close()
                response.release_conn()

    def _pool(self, ca_file: str) -> HTTPConnectionPool:
        with self._lock:
            pool = self._pools.get(ca_file)
            if pool is None:
                if self.scheme == "https":
                    pool = _TLSPool(self.host, self.port, maxsize=POOL_CONNECTIONS, ssl_context=tls_context(ca_file))
                else:
                    pool = _Pool(self.host, self.port, maxsize=POOL_CONNECTIONS)
                self._pools[ca_file] = pool
            return pool

    def _describe(self, exc: BaseException, request: HttpRequest) -> str:
        """The error as text without the request's query (an API key may be in it), scrubbed of secrets."""
        url = urlsplit(request.url)
        text = f"{type(exc).__name__}: {exc}"
        if url.query:
            text = text.replace(request.url, self.origin + url.path).replace(f"{url.path}?{url.query}", url.path)
        return scrub(text)


_hosts: dict[tuple[str, str, int], HostClient] = {}
_hosts_lock = threading.Lock()


def host_client(url: str, protocol: FeedProtocol) -> HostClient:
    """The process's client of the URL's host; its rules come from the first protocol that asks it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
    key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    with _hosts_lock:
        client = _hosts.get(key)
        if client is None:
            rules = HostRules(protocol.backfill_min_interval_s, protocol.rest_weight_limit, protocol.rest_weight_header)
            client = _hosts[key] = HostClient(*key, rules)
        return client


_watch = threading.local()  # .dog: the watchdog of the request this thread is making


class _Watched:
    """A connection that hands its socket to its thread's watchdog as soon as it has one: a new connection's
    TLS handshake, a kept-alive one's status line and headers (urllib3 reads them inside urlopen) are bounded
    by the request's deadline too, not only each read by the timeout."""

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        dog = getattr(_watch, "dog", None)
        if dog is not None:
            dog.watch(sock)
        return sock

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        dog = getattr(_watch, "dog", None)
        if dog is not None:
            dog.watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection
