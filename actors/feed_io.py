"""The blocking threads a feed actor owns: the socket reader and the REST backfiller.

Both only do I/O and parsing; every decision (reconnect, dedup, gaps) is the actor's, taken on
the messages these threads tell it.
"""
from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
import urllib.error
import urllib.request

import websocket

from feeds.base import Control, FeedProtocol, Gap, MalformedFrame, ParsedRows
from supervision.backoff import Backoff
from telemetry.logs import event

log = logging.getLogger("marketfeed.feed")


class FeedReader(threading.Thread):
    """Owns one WebSocket connection: connect, subscribe, receive, parse, hand on rows in batches."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, url: str, generation: int, actor_ref,
                 batch_rows: int, batch_linger_s: float, connect_timeout_s: float = 10.0):
        super().__init__(name=f"reader-{feed_name}-{generation}", daemon=True)
        self.feed_name, self.protocol, self.url, self.generation = feed_name, protocol, url, generation
        self.actor_ref = actor_ref
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
        from actors.feed import Connected, Disconnected

        error = "closed"
        try:
            ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
            self.ws = ws
            ws.connect(self.url, timeout=self.connect_timeout_s)
            ws.settimeout(None)  # block in recv; the actor's watchdog closes a stale socket
            for message in self.protocol.subscribe_messages():
                ws.send(message)
            self.actor_ref.tell(Connected(self.generation, self.url))
            error = self._receive(ws)
        except Exception as exc:  # noqa: BLE001 - every way a connection ends is reported the same way
            error = f"{type(exc).__name__}: {exc}"
        finally:
            ws = self.ws
            if ws is not None:
                ws.close(timeout=0.5) if ws.connected and not self.closing else ws.shutdown()
            try:
                self.actor_ref.tell(Disconnected(self.generation, "closed by us" if self.closing else error))
            except Exception:  # noqa: BLE001 - the actor is gone: nobody to tell
                pass

    def _receive(self, ws: websocket.WebSocket) -> str:
        from actors.feed import FrameBatch

        parse, protocol_close = self.protocol.parse, websocket.ABNF.OPCODE_CLOSE
        sock = ws.sock
        out = ParsedRows()
        frames = data_frames = pongs = 0
        malformed: list[MalformedFrame] = []
        first_at = 0.0
        reconnect = False

        def hand_on() -> None:
            nonlocal out, frames, data_frames, pongs, malformed, first_at
            self.actor_ref.tell(FrameBatch(self.generation, out, frames, data_frames, tuple(malformed), pongs))
            out, frames, data_frames, pongs, malformed, first_at = ParsedRows(), 0, 0, 0, [], 0.0

        while not self.closing:
            # Nothing more to read right now: hand on what we have instead of holding it in a blocking recv.
            if frames and not select.select([sock], [], [], 0)[0]:
                hand_on()
            opcode, data = ws.recv_data()
            if opcode == protocol_close:
                hand_on()
                return "server closed the connection"
            received_ns = time.time_ns()
            if not frames:
                first_at = time.monotonic()
            frames += 1
            try:
                control = parse(data, received_ns, out)
            except MalformedFrame as exc:
                malformed.append(exc)
                control = Control.INFO
            if control is None:
                data_frames += 1
            elif control is Control.PONG:
                pongs += 1
            elif control is Control.RECONNECT:
                reconnect = True
            if reconnect or len(out) >= self.batch_rows or time.monotonic() - first_at >= self.batch_linger_s:
                hand_on()
            if reconnect:
                return "server announced shutdown"
        hand_on()
        return "closed by us"


class Backfiller(threading.Thread):
    """Fetches gaps over the exchange's REST API, one page at a time, within a request rate."""

    def __init__(self, feed_name: str, protocol: FeedProtocol, actor_ref, min_interval_s: float = 0.2,
                 attempts: int = 5, timeout_s: float = 10.0):
        super().__init__(name=f"backfill-{feed_name}", daemon=True)
        self.feed_name, self.protocol, self.actor_ref = feed_name, protocol, actor_ref
        self.min_interval_s, self.attempts, self.timeout_s = min_interval_s, attempts, timeout_s
        self.gaps: queue.Queue[Gap | None] = queue.Queue()
        self._last_request = 0.0

    def stop(self) -> None:
        self.gaps.put(None)

    def run(self) -> None:
        from actors.feed import BackfillDone, BackfillRows

        while (gap := self.gaps.get()) is not None:
            requested, fetched, error = gap, 0, ""
            while gap is not None:
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
                with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                    return response.read()
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
