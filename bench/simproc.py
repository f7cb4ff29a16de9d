"""The simulator in a process of its own, so its CPU never shares a GIL with the process measured.

`python -m bench.simproc '<json>'` prints {"url", "rest"} and then answers one JSON line per command
read from stdin: {"wait": n} (n connections subscribed), {"start": true}, {"emitted": true}.
"""
from __future__ import annotations

import sys
import time

import orjson

from sim import Simulator
from sim.market import MAX_MS_RATE


def main(spec: dict) -> None:
    # At max rate event times are 1 ms apart (sim.market.MAX_MS_RATE): start them far enough back that
    # none lies in the future, which the feed would reject.
    max_rate = spec.get("max_rate", False)
    start_ms = time.time_ns() // 1_000_000 - spec["count"] - 1000 if max_rate else None
    rate = MAX_MS_RATE if max_rate else spec["rate"]  # max rate: `rate` only spaces event times
    with Simulator(["binance"], spec["symbols"], rate=rate, count=spec["count"], clock_paused=True,
                   start_ms=start_ms, max_rate=max_rate,
                   stamp_send_time=spec.get("stamp_send_time", False)) as sim:
        if sim.max_rate:
            sim.prepare_max_rate("combined")  # before any client connects: no feed waits on it
        reply({"url": sim.url("binance"), "rest": sim.rest_url("binance")})
        for line in sys.stdin:
            command = orjson.loads(line)
            if "wait" in command:
                sim.wait_until(lambda: sum(bool(c.session.symbols) for c in sim.connections("binance"))
                               >= command["wait"], 60, "subscribed connections")
                reply({"connections": len(sim.connections("binance"))})
            elif "start" in command:
                sim.start_clock()
                reply({"started_ns": time.time_ns()})
            elif "emitted" in command:
                reply({"emitted": sim.emitted("binance")})


def reply(value: dict) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(orjson.loads(sys.argv[1]))
