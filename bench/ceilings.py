"""What one Python thread can physically do here, each stage of the hot path alone, over the same bytes.

raw TLS read (the socket as the feed reader reads it) → frame decoder (feeds/wsframes.py) → parser
(BinanceProtocol.parse) → row building (the sink's ILP encoder) → QuestDB ingest of pre-built buffers; and, for
reference only, the stock websocket-client recv() loop, which marketfeed's reader no longer uses.
"""
from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import websocket
from questdb import Sender

from marketfeed.actors.feed_reader import READ_CHUNK, tls_context
from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import ParsedRows
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.wsframes import OP_TEXT, FrameDecoder
from marketfeed.storage.tables import TRADES
from marketfeed.storage.writer import sender_conf

ROWS_PER_BUFFER = 10_000  # as the sink's default max_rows: one HTTP request each
IDLE_S = 0.2  # the sender is done and the socket was quiet this long: the stream is over


@dataclass
class RawRead:
    chunks: list[bytes]  # as recv() returned them: the decoder ceiling is fed the same pieces
    bytes_s: float  # from the first chunk's arrival to the last's
    tls: str  # protocol and cipher negotiated

    def frames_s(self, frames: int) -> float:
        """Frames per second, given how many the bytes hold (the first chunk's, there before the clock, left out)."""
        total = sum(map(len, self.chunks))
        return frames * self.bytes_s / total


def connect(url: str, ca_file: str) -> websocket.WebSocket:
    """A wss:// connection made as the feed reader makes it: our TLS socket, websocket-client's upgrade."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    plain = socket.create_connection((parts.hostname, parts.port))
    plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.connect(url, socket=tls_context(ca_file).wrap_socket(plain, server_hostname=parts.hostname), redirect_limit=0)
    return ws


def tls_read(url: str, ca_file: str, done: threading.Event) -> RawRead:
    """Every byte of the stream, read as the feed reader reads (non-blocking recv of READ_CHUNK, select when dry),
    until `done` is set (the sender wrote its last frame) and the socket has been quiet for IDLE_S."""
    ws = connect(url, ca_file)
    sock = ws.sock
    assert isinstance(sock, ssl.SSLSocket), "a wss:// connection"
    cipher = sock.cipher()
    assert cipher is not None, "a connected TLS socket has a cipher"
    tls = f"{sock.version()} {cipher[0]}"
    sock.setblocking(False)
    recv, chunks, first, last = sock.recv, list[bytes](), 0.0, 0.0
    while True:
        try:
            chunk = recv(READ_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError):
            if not select.select([sock], [], [], IDLE_S)[0] and done.is_set():
                break
            continue
        if not chunk:
            break
        last = time.perf_counter()
        if not chunks:
            first = last
        chunks.append(chunk)
    ws.shutdown()
    if len(chunks) < 2:
        raise RuntimeError("the TLS stream brought less than two reads")
    return RawRead(chunks, (sum(map(len, chunks)) - len(chunks[0])) / (last - first), tls)


def decode(chunks: list[bytes], keep: int) -> tuple[float, int, list[bytes]]:
    """The project's frame decoder over the recorded reads: messages/s, how many messages, the first `keep`
    payloads (for the parser)."""
    feed = FrameDecoder(FeedConfig.max_frame_bytes).feed
    kept: list[list[tuple[int, bytes]]] = []
    messages, kept_messages = 0, 0
    started = time.perf_counter()
    for chunk in chunks:
        cut = feed(chunk)
        messages += len(cut)
        if kept_messages < keep:
            kept.append(cut)
            kept_messages += len(cut)
    rate = messages / (time.perf_counter() - started)
    payloads = [data for cut in kept for opcode, data in cut if opcode == OP_TEXT][:keep]
    return rate, messages, payloads


def parse(protocol: BinanceProtocol, frames: list[bytes]) -> tuple[float, list]:
    """The exchange parser (msgspec, the number parser of its mode, the row): frames/s, and the rows it made."""
    out, parse_frame, now = ParsedRows(), protocol.parse, time.time_ns()
    started = time.perf_counter()
    for frame in frames:
        parse_frame(frame, now, out)
    return len(frames) / (time.perf_counter() - started), out.trades


def row_building(conf: str, decimals: bool, table: str, rows: list) -> float:
    """questdb Buffer rows/s through the sink's own encoder, a fresh buffer per batch as the writer does."""
    with Sender.from_conf(sender_conf(conf, decimals)) as sender:
        started = time.perf_counter()
        for start in range(0, len(rows), ROWS_PER_BUFFER):
            TRADES.append(sender.new_buffer(), table, rows[start:start + ROWS_PER_BUFFER])
        return len(rows) / (time.perf_counter() - started)


def ingest(conf: str, decimals: bool, table: str, rows: list, repeats: int, first_repeat: int = 0) -> float:
    """Rows/s QuestDB acknowledges from buffers built beforehand (one transactional request each)."""
    with Sender.from_conf(sender_conf(conf, decimals)) as sender:
        buffers = []
        for r in range(first_repeat, first_repeat + repeats):  # distinct trade ids per repeat: DEDUP keeps every row
            shifted = [row._replace(trade_id=row.trade_id + r * 10_000_000) for row in rows]
            for start in range(0, len(shifted), ROWS_PER_BUFFER):
                buffer = sender.new_buffer()
                TRADES.append(buffer, table, shifted[start:start + ROWS_PER_BUFFER])
                buffers.append((buffer, len(shifted[start:start + ROWS_PER_BUFFER])))
        started = time.perf_counter()
        for buffer, _ in buffers:
            sender.flush(buffer, clear=False, transactional=True)
        return sum(n for _, n in buffers) / (time.perf_counter() - started)


def websocket_client_recv(url: str, ca_file: str, frames: int) -> float:
    """For reference: the stock websocket-client recv_data() loop (frames/s), not on marketfeed's path."""
    ws = connect(url, ca_file)
    recv = ws.recv_data
    recv()
    started = time.perf_counter()  # from the first frame: connection setup is not receiving
    for _ in range(frames - 1):
        recv()
    elapsed = time.perf_counter() - started
    ws.shutdown()
    return (frames - 1) / elapsed
