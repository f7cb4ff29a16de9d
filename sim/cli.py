"""Standalone simulator: `python -m sim` / `marketfeed sim`. Prints its URLs as one JSON line."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from marketfeed.sim.server import ExchangeFaults, Simulator

TICK_S = 0.01  # how often periodic faults are checked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketfeed sim", description=__doc__)
    parser.add_argument("--exchange", action="append", help="exchange twin to serve (repeatable; default binance)")
    parser.add_argument("--symbols", action="append", metavar="[EXCHANGE=]A,B",
                        help="comma-separated symbols for every exchange, or with EXCHANGE= for that one "
                             "(repeatable; default BTCUSDT,ETHUSDT)")
    parser.add_argument("--rate", type=float, default=10.0, help="trades per second per symbol")
    parser.add_argument("--count", type=int, default=None, help="trades per symbol, then quiet (default: forever)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-ms", type=int, default=None, help="event time of trade 0 (default: now)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="base port: exchange k listens on port+k (0: ephemeral)")
    parser.add_argument("--ping-interval", type=float, default=None, help="server ping period, s (default: the twin's)")
    parser.add_argument("--pong-timeout", type=float, default=None, help="close if no pong within, s")
    parser.add_argument("--drop-every", type=float, metavar="S", help="drop every connection every S seconds")
    parser.add_argument("--garbage-every", type=int, metavar="N",
                        help="one malformed frame per connection every N trades")
    parser.add_argument("--duplicate-every", type=int, metavar="N", help="send one trade twice every N trades")
    parser.add_argument("--skip-every", type=int, metavar="N", help="lose one trade in transit every N trades")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")
    return parser


@dataclass
class _CountedFault:
    """A fault applied every `every` trades, next once `mark` trades have been emitted."""

    every: int
    mark: int
    fault: Callable[[ExchangeFaults], int]


class PeriodicFaults:
    """Fault schedule for long runs: by wall time (drops) or by trades emitted (the rest)."""

    def __init__(self, sim: Simulator, args: argparse.Namespace):
        self._sim = sim
        self._faults = [sim.faults(name) for name in sim.exchange_names]
        self._drop_every = args.drop_every
        self._next_drop = time.monotonic() + (args.drop_every or 0)
        by_count: list[tuple[int | None, Callable[[ExchangeFaults], int]]] = [
            (args.garbage_every, lambda f: f.send_garbage_all(1)),
            (args.duplicate_every, lambda f: f.duplicate_next_all(1)),
            (args.skip_every, lambda f: f.skip_next_all(1)),
        ]
        self._by_count = [_CountedFault(every, every, fault) for every, fault in by_count if every]

    def tick(self) -> None:
        if self._drop_every and time.monotonic() >= self._next_drop:
            self._next_drop += self._drop_every
            self._apply(lambda f: f.drop_all())
        emitted = min(self._sim.emitted(name) for name in self._sim.exchange_names)
        for schedule in self._by_count:
            if emitted >= schedule.mark:
                schedule.mark = emitted + schedule.every
                self._apply(schedule.fault)

    def _apply(self, fault: Callable[[ExchangeFaults], int]) -> None:
        for faults in self._faults:
            fault(faults)


def symbols_by_exchange(specs: list[str], exchanges: list[str]) -> dict[str, list[str]]:
    """Each exchange's symbols from --symbols values: "A,B" for every exchange, "kraken=A,B" for one."""
    shared, own = ["BTCUSDT", "ETHUSDT"], {}
    for spec in specs:
        exchange, _, names = spec.rpartition("=")
        symbols = [name.strip() for name in names.split(",") if name.strip()]
        if not symbols:
            raise ValueError(f"--symbols {spec!r}: no symbols")
        if not exchange:
            shared = symbols
        elif exchange in exchanges:
            own[exchange] = symbols
        else:
            raise ValueError(f"--symbols {spec!r}: {exchange!r} is not one of the --exchange twins {exchanges}")
    return {exchange: own.get(exchange, shared) for exchange in exchanges}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    exchanges = args.exchange or ["binance"]
    try:
        symbols = symbols_by_exchange(args.symbols or [], exchanges)
    except ValueError as exc:
        parser.error(str(exc))
    sim = Simulator(
        exchanges,
        symbols,
        rate=args.rate,
        count=args.count,
        seed=args.seed,
        start_ms=args.start_ms,
        host=args.host,
        port=args.port,
        ping_interval=args.ping_interval,
        pong_timeout=args.pong_timeout,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with sim:
        faults = PeriodicFaults(sim, args)
        sys.stdout.write(orjson.dumps(sim.urls()).decode() + "\n")
        sys.stdout.flush()
        while not stop.wait(TICK_S):
            faults.tick()
    return 0


if __name__ == "__main__":
    sys.exit(main())
