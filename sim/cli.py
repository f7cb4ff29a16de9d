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
from enum import StrEnum

import orjson

from marketfeed.sim.server import ExchangeFaults, Simulator
from marketfeed.sim.twin import universe

TICK_S = 0.01  # how often periodic faults are checked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketfeed sim", description=__doc__)
    parser.add_argument("--exchange", action="append", help="exchange twin to serve (repeatable; default binance)")
    parser.add_argument("--symbols", action="append", metavar="[EXCHANGE=]A,B",
                        help="comma-separated symbols for every exchange, or with EXCHANGE= for that one "
                             "(repeatable; default BTCUSDT,ETHUSDT)")
    parser.add_argument("--universe", action="append", default=[], metavar="EXCHANGE=N",
                        help="N generated symbols more for EXCHANGE, named as it names them (binance SYM0001USDT, "
                             "kraken SYM0001/USD, coinbase SYM0001-USD, polygon options contracts O:SPY251219C…), "
                             "the same in every run (repeatable)")
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
    rest = parser.add_argument_group(
        "REST faults", "each exchange's documented answer (see marketfeed.sim.Simulator.rest_throttle); applied "
                       "at start, then again every --rest-every seconds if given; each is repeatable")
    rest.add_argument("--rest-throttle", action="append", default=[], metavar="EXCHANGE=COUNT[:RETRY_AFTER_S]",
                      help="the next COUNT REST requests are rate-limited: binance 429 + Retry-After (required) "
                           "+ code -1003, kraken HTTP 200 EAPI:Rate limit exceeded (no Retry-After), coinbase "
                           "and polygon 429 (e.g. binance=3:2)")
    rest.add_argument("--rest-ban", action="append", default=[], metavar="binance=SECONDS",
                      help="Binance's IP ban: HTTP 418 with Retry-After until it ends")
    rest.add_argument("--rest-errors", action="append", default=[], metavar="EXCHANGE=COUNT[:STATUS[:RETRY_AFTER_S]]",
                      help="the next COUNT REST requests get server error STATUS (default 503; kraken=COUNT:200 "
                           "is its EService:Unavailable in the body), with Retry-After if given")
    rest.add_argument("--rest-every", type=float, metavar="S", help="apply the REST faults again every S seconds")
    rest.add_argument("--binance-weight-limit", type=int, default=6000, metavar="N",
                      help="Binance request weight per minute (X-MBX-USED-WEIGHT-1M; 429 past it, 418 when "
                           "429s are ignored; default 6000, as documented)")
    rest.add_argument("--coinbase-string-ids", action="store_true", help="Coinbase REST trade ids as JSON strings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")
    return parser


class RestFaultKind(StrEnum):
    THROTTLE = "throttle"
    BAN = "ban"
    ERRORS = "errors"


_REST_FAULT_NUMBERS = {RestFaultKind.THROTTLE: (1, 2), RestFaultKind.BAN: (1, 1), RestFaultKind.ERRORS: (1, 3)}


@dataclass(frozen=True)
class RestFault:
    """One --rest-* option: EXCHANGE=N[:N…], applied to the simulator as often as asked."""

    kind: RestFaultKind
    exchange: str
    numbers: tuple[int, ...]

    @classmethod
    def parse(cls, kind: RestFaultKind, spec: str, exchanges: list[str]) -> RestFault:
        exchange, _, values = spec.partition("=")
        fewest, most = _REST_FAULT_NUMBERS[kind]
        try:
            numbers = tuple(int(value) for value in values.split(":"))
        except ValueError:
            numbers = ()
        if not fewest <= len(numbers) <= most:
            raise ValueError(f"--rest-{kind} {spec!r}: expected EXCHANGE=" + ":".join(["N"] * most)
                             + f" with at least {fewest} number(s)")
        if exchange not in exchanges:
            raise ValueError(f"--rest-{kind} {spec!r}: {exchange!r} is not one of the --exchange twins {exchanges}")
        return cls(kind, exchange, numbers)

    def apply(self, sim: Simulator) -> None:
        """ValueError for an answer the exchange never gives (e.g. a Kraken ban)."""
        match self.kind, self.numbers:
            case RestFaultKind.THROTTLE, (count, *retry_after):
                sim.rest_throttle(self.exchange, count, *retry_after)
            case RestFaultKind.BAN, (seconds,):
                sim.rest_ban(self.exchange, seconds)
            case RestFaultKind.ERRORS, (count, *rest):
                sim.rest_errors(self.exchange, count, *rest)


def rest_faults(args: argparse.Namespace, exchanges: list[str]) -> list[RestFault]:
    """Every --rest-throttle/--rest-ban/--rest-errors option, parsed; ValueError names a bad one."""
    options = ((RestFaultKind.THROTTLE, args.rest_throttle), (RestFaultKind.BAN, args.rest_ban),
               (RestFaultKind.ERRORS, args.rest_errors))
    return [RestFault.parse(kind, spec, exchanges) for kind, specs in options for spec in specs]


@dataclass
class _CountedFault:
    """A fault applied every `every` trades, next once `mark` trades have been emitted."""

    every: int
    mark: int
    fault: Callable[[ExchangeFaults], int]


class PeriodicFaults:
    """Fault schedule for long runs: by wall time (drops, REST faults) or by trades emitted (the rest)."""

    def __init__(self, sim: Simulator, args: argparse.Namespace, rest: list[RestFault]):
        self._sim = sim
        self._faults = [sim.faults(name) for name in sim.exchange_names]
        self._drop_every = args.drop_every
        self._next_drop = time.monotonic() + (args.drop_every or 0)
        self._rest, self._rest_every = rest, args.rest_every
        self._next_rest = time.monotonic() + (args.rest_every or 0)
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
        if self._rest_every and time.monotonic() >= self._next_rest:
            self._next_rest += self._rest_every
            for fault in self._rest:
                fault.apply(self._sim)
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


def add_universes(specs: list[str], symbols: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each exchange's symbols followed by the generated ones --universe EXCHANGE=N asks for."""
    extra: dict[str, int] = {}
    for spec in specs:
        exchange, _, count = spec.partition("=")
        if exchange not in symbols:
            raise ValueError(f"--universe {spec!r}: {exchange!r} is not one of the --exchange twins {list(symbols)}")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--universe {spec!r}: expected EXCHANGE=N with N a positive whole number")
        extra[exchange] = int(count)
    return {exchange: list(dict.fromkeys(names + universe(exchange, extra.get(exchange, 0))))
            for exchange, names in symbols.items()}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    exchanges = args.exchange or ["binance"]
    try:
        symbols = add_universes(args.universe, symbols_by_exchange(args.symbols or [], exchanges))
        rest = rest_faults(args, exchanges)
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
        twin_options={"binance": {"weight_limit": args.binance_weight_limit},
                      "coinbase": {"string_ids": args.coinbase_string_ids}},
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with sim:
        for fault in rest:  # before the URLs are out, so no client's request comes first
            try:
                fault.apply(sim)
            except ValueError as exc:
                parser.error(str(exc))
        faults = PeriodicFaults(sim, args, rest)
        sys.stdout.write(orjson.dumps(sim.urls()).decode() + "\n")
        sys.stdout.flush()
        while not stop.wait(TICK_S):
            faults.tick()
    return 0


if __name__ == "__main__":
    sys.exit(main())
