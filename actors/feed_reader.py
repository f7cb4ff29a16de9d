"""The reader thread of one connection: read → frames → session → hand on. I/O only.

Like the sync layer of the `websockets` library over its sans-I/O core: the frame decoder
(feeds/wsframes.py) and the session (the exchange's parser, feeds/<exchange>.py) decide what the bytes
mean; the thread reads, hands bursts of rows to its outlet and says how the connection ended. Every
decision about the connection (stale, pong, roll, reconnect) is the feed actor's.
"""
from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import websocket

from marketfeed.actors.feed_messages import Connected, Disconnected, FrameBatch, ShutdownAnnounced, SubscriptionRefused
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Control, FeedSession, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    FrameRefused,
    MessageTooBig,
)
from marketfeed.telemetry.logs import event

log = logging.getLogger("marketfeed.feed")

STATUS_PROTOCOL_ERROR, STATUS_MESSAGE_TOO_BIG = 1002, 1009
READ_CHUNK = 256 * 1024  # bytes per recv: one syscall serves hundreds of frames
BATCHES_IN_FLIGHT = 4  # FrameBatches told to the feed actor and not yet handled, per connection
CREDIT_POLL_S = 0.5  # how often a reader waiting for credit (or a writer) checks whether it was closed
# TCP connect + TLS + HTTP upgrade, every redirect hop included, end within this: a peer that trickles its answer
# a byte at a time outlasts any per-read timeout. No config key is about the handshake; exchanges answer in < 1 s.
HANDSHAKE_S = 10.0
MAX_REDIRECTS = 3  # hops followed with follow_redirects (websocket-client's own limit)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_SCHEME_STRENGTH = {"ws": 0, "wss": 1}  # a redirect may keep its scheme or add TLS, never drop it


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificates and host names are always verified; ca_file only chooses whom to trust (empty: the system)."""
    return ssl.create_default_context(cafile=ca_file or None)


class SocketDeadline:
    """One deadline (time.monotonic()) over every read and write of a connection being made: when it passes, the
    socket watched then is shut down, so a blocked read returns at once. It watches a duplicate of the socket's
    descriptor, its own until cancel(): wrapping the socket in TLS (which detaches the original) or closing it
    cannot make the deadline shut another connection down."""

    def __init__(self, at: float):
        self.at = at
        self.fired = False
        self._lock = threading.Lock()
        self._watched: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.fired or self.remaining() <= 0

    def watch(self, sock: socket.socket | None) -> None:
        """From now on the deadline shuts `sock` down (the socket it watched before is no longer its business)."""
        if sock is None:
            return
        with self._lock:
            if self._watched is not None:
                self._watched.close()
            self._watched = socket.fromfd(sock.fileno(), sock.family, sock.type)
            if self._timer is None:
                self._timer = threading.Timer(max(0.0, self.remaining()), self.expire)
                self._timer.daemon = True
                self._timer.start()
        if self.fired:  # passed while it was being armed
            self.expire()

    def cancel(self) -> None:
        """The connection is made (or given up): nothing more to shut. `fired` is final once this returns."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._watched is not None:
                self._watched.close()
                self._watched = None

    def expire(self) -> None:
        """Shut the watched socket down now (the deadline passed, or the connection is no longer wanted)."""
        with self._lock:
            self.fired = True
            if self._watched is not None:
                try:
                    self._watched.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its peer


class RedirectRefused(Exception):
    """The server answered the upgrade with a redirect that the feed's configuration does not let us follow."""


class HandshakeTimeout(Exception):
    """No WebSocket connection (TCP, TLS, upgrade) within the handshake deadline."""


@dataclass(frozen=True)
class ReaderLimits:
    """What a reader needs of its feed's configuration, and nothing else."""

    batch_frames: int  # hand rows on after this many frames…
    batch_linger_s: float  # …or once the oldest waited this long
    max_frame_bytes: int  # a bigger WebSocket message closes the connection
    max_json_bytes: int  # a bigger message is a malformed frame, never parsed
    ca_file: str = ""
    handshake_s: float = HANDSHAKE_S
    follow_redirects: bool = False  # off: a redirect fails the connect
    hosts: frozenset[str] = frozenset()  # host names of the feed's url and alt_urls: the only ones redirected to
    message_interval_s: float = 0.0  # between the subscribe messages: the exchange limits what a client sends

    @classmethod
    def of(cls, feed: FeedConfig, message_interval_s: float = 0.0) -> ReaderLimits:
        hosts = frozenset(host for url in (feed.url, *feed.alt_urls) if (host := urlsplit(url).hostname))
        return cls(feed.batch_rows, feed.batch_linger_s, feed.max_frame_bytes, feed.max_json_bytes, feed.ca_file,
                   handshake_s=feed.handshake_timeout_s, follow_redirects=feed.follow_redirects, hosts=hosts,
                   message_interval_s=message_interval_s)


def redirect_target(url: str, status: int, location: str | None, limits: ReaderLimits) -> str:
    """The URL a redirect of `url` leads to, when limits let it be followed: only with follow_redirects, only to a
    host of the feed (what it sends after the upgrade, an API key among it, goes to the configured hosts only), and
    never from wss:// to ws://. RedirectRefused names the Location and why otherwise."""
    if not location:
        raise RedirectRefused(f"HTTP {status} redirect from {url} without a Location")
    try:
        target = urljoin(url, location.strip())
        parts = urlsplit(target)
        scheme, host = parts.scheme, parts.hostname
    except ValueError:  # a Location that is not a URL
        target, scheme, host = location, "", None
    said = f"HTTP {status} redirect from {url} to {target[:300]} refused"
    if not limits.follow_redirects:
        raise RedirectRefused(f"{said}: follow_redirects is off")
    if scheme not in _SCHEME_STRENGTH:
        raise RedirectRefused(f"{said}: not a ws:// or wss:// URL")
    if _SCHEME_STRENGTH[scheme] < _SCHEME_STRENGTH.get(urlsplit(url).scheme, 1):
        raise RedirectRefused(f"{said}: wss:// to ws:// would send in clear")
    if host not in limits.hosts | {urlsplit(url).hostname}:
        raise RedirectRefused(f"{said}: host {host} is not the feed's (url, alt_urls)")
    return target


class ReaderOutlet:
    """Where one reader's news goes: its feed actor, each message tagged with the connection's generation.

    The actor's inbox is unbounded: credits bound the batches in flight (the actor hands one back per batch
    handled), and past them the reader stops reading, so TCP pushes back on the exchange rather than memory
    growing. `caught_up(timeout)` (the sink directory's) holds the reader while a writer is behind QuestDB.
    """

    def __init__(self, actor_ref, generation: int, caught_up: Callable[[float], bool]):
        self.actor_ref, self.generation, self.caught_up = actor_ref, generation, caught_up
        self._credit = threading.Semaphore(BATCHES_IN_FLIGHT)

    def connected(self, url: str) -> None:
        self.actor_ref.tell(Connected(self.generation, url))

    def refused(self, reason: str) -> None:
        self.actor_ref.tell(SubscriptionRefused(self.generation, reason))

    def shutdown_announced(self) -> None:
        self.actor_ref.tell(ShutdownAnnounced(self.generation))

    def batch(self, rows: ParsedRows, frames: int, data_frames: int, malformed: list[MalformedFrame], pongs: int,
              closing: Callable[[], bool]) -> None:
        """Hand on one burst; blocks while the actor is behind or a writer is, until `closing()`."""
        while not self._credit.acquire(timeout=CREDIT_POLL_S):
            if closing():
                return
        self.actor_ref.tell(FrameBatch(self.generation, rows, frames, data_frames, tuple(malformed), pongs))
        while not self.caught_up(CREDIT_POLL_S):
            if closing():
                return

    def handled(self) -> None:
        """The actor has handled one of this connection's batches."""
        self._credit.release()

    def closed(self, reason: str) -> None:
        try:
            self.actor_ref.tell(Disconnected(self.generation, reason))
        except Exception:  # noqa: BLE001 - the actor is gone: nobody to tell
            pass


class FeedReader(threading.Thread):
    """Owns one WebSocket connection: connect, subscribe, receive, parse, hand on rows in bursts."""

    def __init__(self, name: str, url: str, session: FeedSession, outlet: ReaderOutlet, limits: ReaderLimits):
        super().__init__(name=name, daemon=True)
        self.url, self.session, self.outlet, self.limits = url, session, outlet, limits
        self.ws: websocket.WebSocket | None = None
        self.handshake: SocketDeadline | None = None  # while the connection is being made
        self.closing = False
        self._closed = threading.Event()  # close() was called: wakes a paced subscribe

    @property
    def generation(self) -> int:
        return self.outlet.generation

    def close(self) -> None:
        """Unblock the thread from outside: shutdown() wakes a blocked recv, close() alone does not."""
        self.closing = True
        self._closed.set()
        if self.handshake is not None:
            self.handshake.expire()
        ws = self.ws
        if ws is not None and ws.sock is not None:
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self, text: str) -> None:
        ws = self.ws
        if ws is not None and ws.connected:
            ws.send(text)

    def run(self) -> None:
        error, bad_stream = "closed", False
        try:
            ws, url = self._open()
            ws.settimeout(None)  # block in recv; the actor's watch closes a stale socket
            for i, message in enumerate(self.session.subscribe_messages()):
                if i and self.limits.message_interval_s and self._closed.wait(self.limits.message_interval_s):
                    raise ConnectionAbortedError("closed while subscribing")
                ws.send(message)
            self.outlet.connected(url)
            error = self._receive(ws)
        except SubscriptionRejected as exc:
            self.closing = True
            self.outlet.refused(str(exc))
        except FrameRefused as exc:
            error, bad_stream = f"{type(exc).__name__}: {exc}", True
            status = STATUS_MESSAGE_TOO_BIG if isinstance(exc, MessageTooBig) else STATUS_PROTOCOL_ERROR
            try:  # say why, then drop the socket: a close handshake would read the rest of the bad stream
                assert self.ws is not None, "frames come from a connection made"
                self.ws.send_close(status, str(exc)[:100].encode())
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass
        except Exception as exc:  # noqa: BLE001 - every way a connection ends is reported the same way
            error = f"{type(exc).__name__}: {exc}"
        finally:
            made = self.ws  # None: the WebSocket could not even be made
            if made is not None:
                made.close(timeout=0.5) if made.connected and not self.closing and not bad_stream else made.shutdown()
            self.outlet.closed("closed by us" if self.closing else error)

    def _open(self) -> tuple[websocket.WebSocket, str]:
        """The connection, made within limits.handshake_s whatever the server trickles, and its URL (where the
        redirects it was let follow led). A redirect is refused unless limits say otherwise (redirect_target)."""
        limits, url = self.limits, self.url
        deadline = self.handshake = SocketDeadline(time.monotonic() + limits.handshake_s)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                ws = self.ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
                try:
                    # Our own socket: websocket-client would follow redirects and bound each read only.
                    ws.connect(url, socket=self._socket(url, deadline), redirect_limit=0)
                except websocket.WebSocketException:
                    status = ws.getstatus()
                    if status not in REDIRECT_STATUSES or deadline.passed():
                        raise
                    target = redirect_target(url, status, (ws.getheaders() or {}).get("location"), limits)
                    event(log, "ws_redirect_followed", logging.WARNING, status=status, url=url, to=target)
                    url = target
                    continue
                deadline.cancel()
                if deadline.fired:  # passed as the handshake ended: the socket is shut
                    raise HandshakeTimeout
                return ws, url
            raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects from {self.url}")
        except (OSError, websocket.WebSocketException, HandshakeTimeout):
            if deadline.passed() and not self.closing:  # whatever broke, it broke because the deadline shut it
                raise HandshakeTimeout(f"no WebSocket handshake within {limits.handshake_s:g} s "
                                       "(connect, TLS, upgrade)") from None
            raise
        finally:
            deadline.cancel()
            self.handshake = None

    def _socket(self, url: str, deadline: SocketDeadline) -> socket.socket:
        """TCP to the URL's host and port, then TLS for wss://, each read bounded by the deadline."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEME_STRENGTH or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url}")
        host, secure = parts.hostname, parts.scheme == "wss"
        sock = _tcp(host, parts.port or (443 if secure else 80), deadline)
        deadline.watch(sock)
        if not secure:
            return sock
        try:
            return tls_context(self.limits.ca_file).wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise

    def _receive(self, ws: websocket.WebSocket) -> str:
        parse, outlet, limits = self.session.parse, self.outlet, self.limits
        sock = ws.sock
        assert sock is not None, "connect() succeeded: the WebSocket holds its socket until run() closes it"
        recv = sock.recv
        decoder = FrameDecoder(limits.max_frame_bytes)
        out = ParsedRows()
        frames = data_frames = pongs = 0
        malformed: list[MalformedFrame] = []
        first_ns = 0
        linger_ns = int(limits.batch_linger_s * 1e9)
        batch_frames, max_json_bytes = limits.batch_frames, limits.max_json_bytes

        def closing() -> bool:
            return self.closing

        def hand_on() -> None:
            nonlocal out, frames, data_frames, pongs, malformed
            outlet.batch(out, frames, data_frames, malformed, pongs, closing)
            out, frames, data_frames, pongs, malformed = ParsedRows(), 0, 0, 0, []

        # Non-blocking reads of large chunks: one recv syscall serves every frame that has arrived. When
        # the socket runs dry, the burst is handed on before waiting, so no row is held in a blocking wait.
        sock.setblocking(False)
        while not self.closing:
            try:
                chunk = recv(READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                if frames:
                    hand_on()
                select.select([sock], [], [])  # close() shuts the socket down: that makes it readable
                continue
            if not chunk:
                hand_on()
                return "the server dropped the connection without a close frame"
            refused: FrameRefused | None = None
            try:
                messages = decoder.feed(chunk)
            except FrameRefused as exc:  # the messages cut before the refused frame still count
                refused, messages = exc, exc.messages
            received_ns = time.time_ns()  # the whole chunk arrived at once
            if not frames:
                first_ns = received_ns
            for opcode, data in messages:
                if opcode not in (OP_TEXT, OP_BINARY):
                    if opcode == OP_PING:
                        ws.pong(data)
                    elif opcode == OP_CLOSE:
                        hand_on()
                        return "server closed the connection"
                    continue  # an unsolicited pong
                frames += 1
                try:
                    if len(data) > max_json_bytes:  # never handed to the JSON parser
                        raise MalformedFrame(
                            f"message of {len(data)} bytes is above max_json_bytes ({max_json_bytes})", data)
                    control = parse(data, received_ns, out)
                except MalformedFrame as exc:
                    malformed.append(exc)
                    control = Control.INFO
                except SubscriptionRejected:
                    hand_on()  # what arrived before the refusal still counts
                    raise
                if control is None:
                    data_frames += 1
                elif control is Control.PONG:
                    pongs += 1
                elif control is Control.RECONNECT:
                    # Keep reading: the actor opens a successor and closes this connection once it is up.
                    hand_on()
                    outlet.shutdown_announced()
            if refused is not None:
                hand_on()
                raise refused
            # A frame carries at most a few rows (Polygon's arrays more): frames bound the batch cheaply.
            if frames >= batch_frames or (frames and received_ns - first_ns >= linger_ns):
                hand_on()
        hand_on()
        return "closed by us"


def _tcp(host: str, port: int, deadline: SocketDeadline) -> socket.socket:
    """A TCP connection to the first of the host's addresses that answers before the deadline."""
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        remaining = deadline.remaining()
        if remaining <= 0:
            raise TimeoutError
        sock = socket.socket(family, kind, proto)
        try:
            for option in websocket.DEFAULT_SOCKET_OPTION:  # no Nagle delay, TCP keepalive: as websocket-client
                sock.setsockopt(*option)
            sock.settimeout(remaining)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error
