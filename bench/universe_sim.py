"""A whole-market simulator in a process of its own (bench/whole_market.py), as bench/simproc.py is for bench/run.py.

`python -m bench.universe_sim '<json>'` ({"universe": {exchange: N}, "rate": trades/s per symbol, "count": trades
per symbol, "tls": [cert file, key file][, "api_key": Polygon's, "min_trade_value"]}) serves N generated symbols per
exchange over wss:// and https:// on the market clock (Binance klines are built as trades happen: nothing is
pre-rendered) and prints {exchange: {"ws", "rest"}}; then it answers one JSON line per command read from stdin:
{"wait_streams": {exchange: n}} (n streams subscribed on open connections), {"truth": true} (of the run's `count`
ticks: Binance symbol → [first id, trades] and start_ms; Polygon: how many trades reach min_trade_value),
{"start": true} (→ started_ns), {"emitted": true}, {"opened": true} (connections opened per exchange, from the
simulator's connection log), {"refusals": true} (per exchange, every limit it enforced).
"""
from __future__ import annotations

import functools
import logging
import re
import ssl
import sys
from collections import Counter

import orjson

from bench.simproc import reply
from marketfeed.feeds.polygon import OPTIONS_MULTIPLIER
from marketfeed.sim import Simulator, universe
from marketfeed.sim.polygon import is_option, trade_event

SUBSCRIBE_TIMEOUT_S = 120.0


class ConnectionLog(logging.Handler):
    """Counts the simulator's "<exchange> connection <n> opened" log lines per exchange: every connection opened,
    the short-lived ones included."""

    OPENED = re.compile(r"^(\w+) connection \d+ opened")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.opened: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if match := self.OPENED.match(record.getMessage()):
            self.opened[match[1]] += 1


def main(spec: dict) -> None:
    connection_log = ConnectionLog()
    sim_log = logging.getLogger("sim")
    sim_log.setLevel(logging.INFO)
    sim_log.addHandler(connection_log)
    symbols = {exchange: universe(exchange, n) for exchange, n in spec["universe"].items()}
    options = {"polygon": {"api_key": spec["api_key"]}} if "api_key" in spec else {}
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # as the real exchanges serve theirs
    tls.load_cert_chain(*spec["tls"])
    with Simulator(list(symbols), symbols, rate=spec["rate"], count=spec["count"], clock_paused=True,
                   twin_options=options, ssl_context=tls) as sim:
        reply(sim.urls())
        for line in sys.stdin:
            command = orjson.loads(line)
            if "wait_streams" in command:
                for exchange, n in command["wait_streams"].items():
                    sim.wait_until(functools.partial(subscribed, sim, exchange, n), SUBSCRIBE_TIMEOUT_S,
                                   f"{n} {exchange} streams subscribed")
                reply({"streams": {exchange: streams(sim, exchange) for exchange in symbols}})
            elif "truth" in command:
                reply(truth(sim, symbols, spec["count"], spec.get("min_trade_value", 0.0)))
            elif "start" in command:
                sim.start_clock()
                reply({"started_ns": sim.clock_started_ns})
            elif "emitted" in command:
                reply({"emitted": sim.emitted(next(iter(symbols)))})
            elif "opened" in command:
                reply({"opened": dict(connection_log.opened)})
            elif "refusals" in command:
                reply({"refusals": {exchange: [f"{r.limit}: {r.detail}" for r in sim.refusals(exchange)]
                                    for exchange in symbols}})


def streams(sim: Simulator, exchange: str) -> int:
    return sum(len(c.session.streams) for c in sim.connections(exchange) if not c.closed)


def subscribed(sim: Simulator, exchange: str, n: int) -> bool:
    return streams(sim, exchange) >= n


def truth(sim: Simulator, symbols: dict[str, list[str]], count: int, min_trade_value: float) -> dict:
    """The ground truth of a run of `count` clock ticks (asked before the clock starts, it costs the run nothing):
    Binance symbol → [first trade id, trades], the event time of trade 0 (start_ms); Polygon: how many trades are
    worth at least min_trade_value (price × size × 100 for a contract) as the stream carries them."""
    result: dict = {}
    if "binance" in symbols:
        markets = [sim.market("binance")[s] for s in symbols["binance"]]
        result["binance"] = {m.symbol: [m.first_id, m.happened(count)] for m in markets}
        result["start_ms"] = markets[0].start_ms
    if "polygon" in symbols:
        market = sim.market("polygon")
        result["polygon_qualifying"] = sum(
            1 for s in symbols["polygon"] for trade in market[s].trades(0, market[s].happened(count))
            if (event := trade_event(trade))["p"] * event["s"] * (OPTIONS_MULTIPLIER if is_option(s) else 1)
            >= min_trade_value)
    return result


if __name__ == "__main__":
    main(orjson.loads(sys.argv[1]))
