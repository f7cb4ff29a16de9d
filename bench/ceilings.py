"""What one Python process can physically do here, each stage alone: receive, parse, build rows, ingest."""
from __future__ import annotations

import time

import orjson
import websocket
from questdb import Sender

from marketfeed.feeds.base import ParsedRows
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.storage.tables import TRADES

ROWS_PER_BUFFER = 10_000  # as the sink's default max_rows: one HTTP request each


def receive(url: str, frames: int, keep: int) -> tuple[float, list[bytes]]:
    """Raw websocket-client receive rate (frames/s, no parsing), as the feed reader opens its socket.

    Returns the rate and the first `keep` frames, for the parse and row-building ceilings."""
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.connect(url)
    recv, kept = ws.recv_data, []
    recv()
    started = time.perf_counter()  # from the first frame: connection setup is not receiving
    for _ in range(keep - 1):
        kept.append(recv()[1])
    for _ in range(frames - keep):
        recv()
    elapsed = time.perf_counter() - started
    ws.close()
    return (frames - 1) / elapsed, kept


def orjson_parse(frames: list[bytes]) -> float:
    loads = orjson.loads
    started = time.perf_counter()
    for frame in frames:
        loads(frame)
    return len(frames) / (time.perf_counter() - started)


def protocol_parse(protocol: BinanceProtocol, frames: list[bytes]) -> tuple[float, list]:
    """The exchange parser (orjson + row construction): frames/s, and the rows it made."""
    out, parse, now = ParsedRows(), protocol.parse, time.time_ns()
    started = time.perf_counter()
    for frame in frames:
        parse(frame, now, out)
    return len(frames) / (time.perf_counter() - started), out.trades


def row_building(conf: str, table: str, rows: list) -> float:
    """questdb Buffer rows/s through the sink's own encoder, a fresh buffer per batch as the writer does."""
    with Sender.from_conf(conf) as sender:
        started = time.perf_counter()
        for start in range(0, len(rows), ROWS_PER_BUFFER):
            TRADES.append(sender.new_buffer(), table, rows[start:start + ROWS_PER_BUFFER])
        return len(rows) / (time.perf_counter() - started)


def ingest(conf: str, table: str, rows: list, repeats: int) -> float:
    """Rows/s QuestDB acknowledges from buffers built beforehand (one transactional request each)."""
    with Sender.from_conf(conf) as sender:
        buffers = []
        for r in range(repeats):  # distinct trade ids per repeat, so DEDUP keeps every row
            shifted = [row._replace(trade_id=row.trade_id + r * 10_000_000) for row in rows]
            for start in range(0, len(shifted), ROWS_PER_BUFFER):
                buffer = sender.new_buffer()
                TRADES.append(buffer, table, shifted[start:start + ROWS_PER_BUFFER])
                buffers.append((buffer, len(shifted[start:start + ROWS_PER_BUFFER])))
        started = time.perf_counter()
        for buffer, _ in buffers:
            sender.flush(buffer, clear=False, transactional=True)
        return sum(n for _, n in buffers) / (time.perf_counter() - started)
