"""The benchmarks' pre-rendered modes: every trade, as the ground truth has it; paced mode never early."""
import time

import orjson
import pytest
from simclient import COMBINED_PATH, SYMBOLS, Client, by_symbol

from marketfeed.sim import Simulator

COUNT = 300


def received(client: Client, n: int) -> list[tuple[int, dict]]:
    """(arrival ns, trade event) of the next n frames."""
    return [(time.time_ns(), orjson.loads(client.ws.recv())["data"]) for _ in range(n)]


@pytest.mark.parametrize("paced", [False, True])
def test_every_trade_arrives_as_in_the_ground_truth(paced):
    rate = 600.0  # per symbol: the paced run lasts half a second
    with Simulator(["binance"], SYMBOLS, rate=rate, count=COUNT, clock_paused=True, max_rate=True,
                   paced=paced) as sim:
        sim.prepare_max_rate("combined")
        client = Client(sim, COMBINED_PATH)
        sim.start_clock()
        frames = received(client, COUNT * len(SYMBOLS))
        client.ws.shutdown()
        ids = by_symbol([event for _, event in frames])
        assert ids == {s: sim.truth("binance", s) for s in SYMBOLS}
        if paced:  # trade i is written once due: at clock start + i / rate, never before
            started = sim.clock_started_ns
            assert started is not None  # set by start_clock()
            first = {s: sim.truth("binance", s)[0] for s in SYMBOLS}
            early = [event["t"] for at, event in frames if at < started + (event["t"] - first[event["s"]]) / rate * 1e9]
            assert early == []
            assert frames[-1][0] - started >= (COUNT - 1) / rate * 1e9


def test_paced_needs_the_pre_rendered_mode():
    with pytest.raises(ValueError, match="paced"):
        Simulator(["binance"], SYMBOLS, count=10, clock_paused=True, paced=True)
