"""The blocking threads a feed actor owns: the socket reader and the REST backfiller.

Both only do I/O and parsing; every decision (reconnect, dedup, gaps) is the actor's, taken on
the messages these threads tell it.
"""
from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request

import websocket

from marketfeed.feeds.base import Control, FeedProtocol, Gap, MalformedFrame, ParsedRows, SubscriptionRejected
from marketfeed.feeds.wsframes import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, FrameDecoder, MessageTooBig, ProtocolViolation
from marketfeed.supervision.backoff import Backoff
from marketfeed.telemetry.logs import event

log = logging.getLogger("marketfeed.feed")
STATUS_PROTOCOL_ERROR, STATUS_MESSAGE_TOO_BIG = 1002, 1009
READ_CHUNK = 256 * 1024  # bytes per recv: one syscall serves hundreds of frames
BATCHES_IN_FLIGHT = 4  # FrameBatches told to the feed actor and not yet handled, per connection


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificates and host names are always verified; ca_file only chooses whom to trust (empty: the system)."""
    return ssl.create_default_context(cafile=ca_file or None)


class FeedReader(threading.Thread):
    """Owns one WebSocket connection: connect, subscribe, receive, parse, hand on rows in batches."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, url: str, generation: int, actor_ref, sinks,
                 batch_rows: int, batch_linger_s: float, connect_timeout_s: float = 10.0):
        super().__init__(name=f"reader-{feed_name}-{generation}", daemon=True)
        self.feed_name, self.protocol, self.url, self.generation = feed_name, protocol, url, generation
        self.actor_ref, self.sinks = actor_ref, sinks
        self.batch_rows, self.batch_linger_s = batch_rows, batch_linger_s
        self.connect_timeout_s = connect_timeout_s
        self.ws: websocket.WebSocket | None = None
        self.closing = False

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
        from marketfeed.actors.feed import Connected, Disconnected, SubscriptionRefused

        error, bad_stream = "closed", False
        try:
            feed = self.protocol.feed
            ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True,
                                     sslopt={"context": tls_context(feed.ca_file)})
            self.ws = ws
            ws.connect(self.url, timeout=self.connect_timeout_s)
            ws.settimeout(None)  # block in recv; the actor's watchdog closes a stale socket
            for message in self.protocol.subscribe_messages():
                ws.send(message)
            self.actor_ref.tell(Connected(self.generation, self.url))
            error = self._receive(ws)
        except SubscriptionRejected as exc:
            self.closing = True
            self.actor_ref.tell(SubscriptionRefused(self.generation, str(exc)))
        except (MessageTooBig, ProtocolViolation) as exc:
            error, bad_stream = f"{type(exc).__name__}: {exc}", True
            status = STATUS_MESSAGE_TOO_BIG if isinstance(exc, MessageTooBig) else STATUS_PROTOCOL_ERROR
            try:  # say why, then drop the socket: a close handshake would read the rest of the bad stream
                self.ws.send_close(status, str(exc)[:100].encode())
            except Exception:  # noqa: BLE001 - the socket may be gone already
                pass
        except Exception as exc:  # noqa: BLE001 - every way a connection ends is reported the same way
            error = f"{type(exc).__name__}: {exc}"
        finally:
            ws = self.ws
            if ws is not None:
                ws.close(timeout=0.5) if ws.connected and not self.closing and not bad_stream else ws.shutdown()
            try:
                self.actor_ref.tell(Disconnected(self.generation, "closed by us" if self.closing else error))
            except Exception:  # noqa: BLE001 - the actor is gone: nobody to tell
                pass

    def _receive(self, ws: websocket.WebSocket) -> str:
        from marketfeed.actors.feed import FrameBatch, ShutdownAnnounced

        parse = self.protocol.parse
        sock = ws.sock
        recv = sock.recv
        decoder = FrameDecoder(self.protocol.feed.max_frame_bytes)
        out = ParsedRows()
        frames = data_frames = pongs = 0
        malformed: list[MalformedFrame] = []
        first_ns = 0
        linger_ns, batch_frames = int(self.batch_linger_s * 1e9), self.batch_rows
        max_json_bytes = self.protocol.feed.max_json_bytes

        credit = threading.Semaphore(BATCHES_IN_FLIGHT)

        def hand_on() -> None:
            nonlocal out, frames, data_frames, pongs, malformed
            # The actor's inbox is unbounded: past a few unhandled batches, stop reading (TCP pushes back)
            # rather than let memory grow. close() ends the wait.
            while not credit.acquire(timeout=0.5):
                if self.closing:
                    return
            self.actor_ref.tell(FrameBatch(self.generation, out, frames, data_frames, tuple(malformed), pongs, credit))
            out, frames, data_frames, pongs, malformed = ParsedRows(), 0, 0, 0, []
            # A writer behind QuestDB: stop reading, the connection stays open (see SinkDirectory).
            while not self.sinks.wait_caught_up(0.5):
                if self.closing:
                    return

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
                    self.actor_ref.tell(ShutdownAnnounced(self.generation))
            # A frame carries at most a few rows (Polygon's arrays more): frames bound the batch cheaply.
            if frames >= batch_frames or (frames and received_ns - first_ns >= linger_ns):
                hand_on()
        hand_on()
        return "closed by us"


class Backfiller(threading.Thread):
    """Fetches gaps over the exchange's REST API, one page at a time, within a request rate."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, actor_ref, allowed: threading.Event,
                 min_interval_s: float = 0.2, attempts: int = 5, timeout_s: float = 10.0):
        super().__init__(name=f"backfill-{feed_name}", daemon=True)
        self.feed_name, self.protocol, self.actor_ref = feed_name, protocol, actor_ref
        self.allowed = allowed  # cleared while the feed is paused by backpressure: no rows to hold
        self.min_interval_s, self.attempts, self.timeout_s = min_interval_s, attempts, timeout_s
        self.gaps: queue.Queue[Gap | None] = queue.Queue()
        self._last_request = 0.0
        self.tls = tls_context(protocol.feed.ca_file)
        self.max_bytes = protocol.feed.max_backfill_bytes

    def stop(self) -> None:
        self.gaps.put(None)

    def run(self) -> None:
        from marketfeed.actors.feed import BackfillDone, BackfillRows

        while (gap := self.gaps.get()) is not None:
            requested, fetched, error = gap, 0, ""
            while gap is not None:
                self.allowed.wait()
                request = self.protocol.backfill_request(gap)
                if request is None:
                    error = "exchange has no backfill"
                    break
                try:
                    body = self._get(request)
                    rows, gap = self.protocol.parse_backfill(gap, body, time.time_ns())
                except (OSError, MalformedFrame) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    break
                fetched += len(rows)
                if rows:
                    self.actor_ref.tell(BackfillRows(rows))
            self.actor_ref.tell(BackfillDone(requested, fetched, error))

    def _get(self, request) -> bytes:
        backoff = Backoff(0.5, 10.0)
        for attempt in range(1, self.attempts + 1):
            wait = self._last_request + self.min_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the exchange's request-rate limit; this thread only does backfill
            self._last_request = time.monotonic()
            try:
                req = urllib.request.Request(request.url, headers=dict(request.headers))
                with urllib.request.urlopen(req, timeout=self.timeout_s, context=self.tls) as response:
                    body = response.read(self.max_bytes + 1)
                if len(body) > self.max_bytes:  # not retried: the next answer would be as big
                    raise MalformedFrame(f"REST response above max_backfill_bytes ({self.max_bytes})", body)
                return body
            except urllib.error.HTTPError as exc:
                if exc.code not in (418, 429) and exc.code < 500:
                    raise
                error = exc
            except OSError as exc:
                error = exc
            if attempt < self.attempts:
                delay = backoff.next_delay()
                event(log, "backfill_retry", logging.WARNING, feed=self.feed_name, attempt=attempt,
                      retry_in_s=round(delay, 2), error=str(error))
                time.sleep(delay)
        raise error
