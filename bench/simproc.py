"""The simulator in a process of its own, so its CPU never shares a GIL with the process measured.

`python -m bench.simproc '<json>'` ({"symbols", "count"[, "rate": trades/s per symbol, paced][, "tls": [cert
file, key file]: wss:// and https:// like the real exchanges]}) prints {"url", "rest"} and then answers one JSON
line per command read from stdin: {"wait": n} (n connections subscribed), {"start": true} (→ started_ns: trade i
of every symbol goes out at started_ns + i / rate), {"emitted": true}.
"""
from __future__ import annotations

import ssl
import sys
import time

import orjson

from marketfeed.sim import Simulator
from marketfeed.sim.market import MAX_MS_RATE


def main(spec: dict) -> None:
    # Frames are rendered up front; either as fast as read (no "rate") or on schedule at "rate" per
    # symbol (paced). Event times are at most 1000/s (sim.market.MAX_MS_RATE), 1 ms apart: start them
    # far enough back that none lies in the future, which the feed would reject.
    paced = "rate" in spec
    start_ms = time.time_ns() // 1_000_000 - spec["count"] - 1000
    rate = spec["rate"] if paced else MAX_MS_RATE  # max rate: `rate` only spaces event times
    tls = None
    if "tls" in spec:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*spec["tls"])
    with Simulator(["binance"], spec["symbols"], rate=rate, count=spec["count"], clock_paused=True,
                   start_ms=start_ms, max_rate=True, paced=paced, ssl_context=tls) as sim:
        sim.prepare_max_rate("combined")  # before any client connects: no feed waits on it
        reply({"url": sim.url("binance"), "rest": sim.rest_url("binance")})
        for line in sys.stdin:
            command = orjson.loads(line)
            if "wait" in command:
                wait_subscribed(sim, command["wait"])
                reply({"connections": len(sim.connections("binance"))})
            elif "start" in command:
                sim.start_clock()
                reply({"started_ns": sim.clock_started_ns})
            elif "emitted" in command:
                reply({"emitted": sim.emitted("binance")})


def wait_subscribed(sim: Simulator, connections: int) -> None:
    """Until `connections` connections have subscribed to their symbols."""
    sim.wait_until(lambda: sum(bool(c.session.symbols) for c in sim.connections("binance")) >= connections,
                   60, "subscribed connections")


def reply(value: dict) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(orjson.loads(sys.argv[1]))
