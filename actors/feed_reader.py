"""The reader thread of one connection: read → frames → session → hand on. I/O only.

Like the sync layer of the `websockets` library over its sans-I/O core: the frame decoder
(feeds/wsframes.py) and the session (the exchange's parser, feeds/<exchange>.py) decide what the bytes
mean; the thread reads, hands bursts of rows to its outlet and says how the connection ended. Every
decision about the connection (stale, pong, roll, reconnect) is the feed actor's.
"""
from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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
    MessageTooBig,
    ProtocolViolation,
)

STATUS_PROTOCOL_ERROR, STATUS_MESSAGE_TOO_BIG = 1002, 1009
READ_CHUNK = 256 * 1024  # bytes per recv: one syscall serves hundreds of frames
BATCHES_IN_FLIGHT = 4  # FrameBatches told to the feed actor and not yet handled, per connection
CREDIT_POLL_S = 0.5  # how often a reader waiting for credit (or a writer) checks whether it was closed


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificates and host names are always verified; ca_file only chooses whom to trust (empty: the system)."""
    return ssl.create_default_context(cafile=ca_file or None)


@dataclass(frozen=True)
class ReaderLimits:
    """What a reader needs of its feed's configuration, and nothing else."""

    batch_frames: int  # hand rows on after this many frames…
    batch_linger_s: float  # …or once the oldest waited this long
    max_frame_bytes: int  # a bigger WebSocket message closes the connection
    max_json_bytes: int  # a bigger message is a malformed frame, never parsed
    ca_file: str = ""
    connect_timeout_s: float = 10.0

    @classmethod
    def of(cls, feed: FeedConfig) -> ReaderLimits:
        return cls(feed.batch_rows, feed.batch_linger_s, feed.max_frame_bytes, feed.max_json_bytes, feed.ca_file)


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
        self.closing = False

    @property
    def generation(self) -> int:
        return self.outlet.generation

    def close(self) -> None:
        """Unblock the thread from outside: shutdown() wakes a blocked recv, close() alone does not."""
        self.closing = True
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
            ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True,
                                     sslopt={"context": tls_context(self.limits.ca_file)})
            self.ws = ws
            ws.connect(self.url, timeout=self.limits.connect_timeout_s)
            ws.settimeout(None)  # block in recv; the actor's watch closes a stale socket
            for message in self.session.subscribe_messages():
                ws.send(message)
            self.outlet.connected(self.url)
            error = self._receive(ws)
        except SubscriptionRejected as exc:
            self.closing = True
            self.outlet.refused(str(exc))
        except (MessageTooBig, ProtocolViolation) as exc:
            error, bad_stream = f"{type(exc).__name__}: {exc}", True
            status = STATUS_MESSAGE_TOO_BIG if isinstance(exc, MessageTooBig) else STATUS_PROTOCOL_ERROR
            try:  # say why, then drop the socket: a close handshake would read the rest of the bad stream
                ws.send_close(status, str(exc)[:100].encode())
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass
        except Exception as exc:  # noqa: BLE001 - every way a connection ends is reported the same way
            error = f"{type(exc).__name__}: {exc}"
        finally:
            made = self.ws  # None: the WebSocket could not even be made
            if made is not None:
                made.close(timeout=0.5) if made.connected and not self.closing and not bad_stream else made.shutdown()
            self.outlet.closed("closed by us" if self.closing else error)

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
            try:
                messages = decoder.feed(chunk)
            except (MessageTooBig, ProtocolViolation):
                hand_on()  # what arrived before it still counts
                raise
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
            # A frame carries at most a few rows (Polygon's arrays more): frames bound the batch cheaply.
            if frames >= batch_frames or (frames and received_ns - first_ns >= linger_ns):
                hand_on()
        hand_on()
        return "closed by us"
