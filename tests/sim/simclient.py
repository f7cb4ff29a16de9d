"""Helpers for the simulator tests: a websocket-client connection (the client marketfeed uses) and REST GETs."""
from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
import websocket

from marketfeed.sim import Connection, Simulator

SYMBOLS = ("BTCUSDT", "ETHUSDT")
COMBINED_PATH = "/stream?streams=btcusdt@trade/ethusdt@trade"
PING_INTERVAL = 0.3  # the shared simulator's keepalive, small so ping tests are quick
PONG_TIMEOUT = 0.5


class Client:
    """One websocket-client connection plus the simulator's handle of it."""

    def __init__(self, sim: Simulator, path: str = COMBINED_PATH):
        known = {c.id for c in sim.connections("binance")}
        self.ws = websocket.create_connection(sim.url("binance") + path, timeout=5, skip_utf8_validation=True)

        def new_connections() -> list[Connection]:
            return [c for c in sim.connections("binance") if c.id not in known]

        sim.wait_until(new_connections, what="the server side of a new connection")
        self.handle = new_connections()[0]

    def recv_json(self) -> Any:  # parsed JSON: the tests check its shape
        return orjson.loads(self.ws.recv())

    def trades(self, n: int) -> list[dict]:
        """The next n trade events (combined-stream envelope removed), skipping other frames."""
        events: list[dict] = []
        while len(events) < n:
            msg = self.recv_json()
            event = msg.get("data", msg)
            if event.get("e") == "trade":
                events.append(event)
        return events


def get(url: str) -> tuple[int, Any]:
    """(status, parsed JSON body) of a GET, errors included; the tests check the body's shape."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, orjson.loads(body) if body else None


def by_symbol(events: list[dict]) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for event in events:
        ids.setdefault(event["s"], []).append(event["t"])
    return ids


def backfill(protocol, gap) -> tuple[list, int]:
    """The feed's own REST backfill loop against the twin: every row of the gap, and the pages it took."""
    rows, pages = [], 0
    while gap is not None:
        with urllib.request.urlopen(protocol.backfill_request(gap).url, timeout=5) as response:
            page, gap = protocol.parse_backfill(gap, response.read(), 0)
        rows += page
        pages += 1
    return rows, pages
