"""Ground truth is deterministic, well-formed and computed on demand."""
import itertools
from decimal import Decimal
from typing import Any

from simclient import get

from marketfeed.sim import Simulator
from marketfeed.sim.market import ExchangeMarket


def market(seed: int, rate: float = 100.0) -> ExchangeMarket:
    return ExchangeMarket("binance", ["BTCUSDT", "ETHUSDT", "FOOUSDT"], seed=seed, rate=rate, start_ms=1_000)


def test_same_seed_gives_same_trades_and_another_seed_does_not():
    a, b, c = market(3), market(3), market(4)
    for symbol in ("BTCUSDT", "ETHUSDT", "FOOUSDT"):
        assert a[symbol].trades(0, 300) == b[symbol].trades(0, 300)
        assert [t.price for t in a[symbol].trades(0, 300)] != [t.price for t in c[symbol].trades(0, 300)]


def test_trade_i_is_the_same_whatever_was_asked_before():
    on_demand, sequential = market(5), market(5)
    late = on_demand["ETHUSDT"].trade(700)
    assert late == sequential["ETHUSDT"].trades(0, 701)[700]
    assert on_demand["ETHUSDT"].trade(3) == sequential["ETHUSDT"].trade(3)


def test_ids_times_prices_and_quantities_are_well_formed():
    for rate in (3.0, 200.0, 5000.0):
        m = market(1, rate)
        for k, symbol in enumerate(("BTCUSDT", "ETHUSDT", "FOOUSDT")):
            trades = m[symbol].trades(0, 1000)
            assert [t.trade_id for t in trades] == list(range((k + 1) * 1_000_000, (k + 1) * 1_000_000 + 1000))
            assert all(a.time_ms < b.time_ms for a, b in itertools.pairwise(trades))
            assert trades[0].time_ms == 1_000
            for t in trades:
                price, qty = Decimal(t.price), Decimal(t.qty)
                assert price > 0 and price % Decimal("0.01") == 0 and qty > 0
                assert len(t.price.split(".")[1]) == 8 and len(t.qty.split(".")[1]) == 8
    assert {t.buyer_is_maker for t in market(1)["BTCUSDT"].trades(0, 100)} == {True, False}


def test_two_runs_with_one_seed_serve_identical_bytes():
    def served() -> tuple[int, Any]:
        with Simulator(["binance"], ["BTCUSDT"], rate=2000, count=50, seed=11, start_ms=1_700_000_000_000) as sim:
            sim.wait_emitted(50)
            return get(sim.rest_url("binance") + "/api/v3/trades?symbol=BTCUSDT&limit=50")

    first, second = served(), served()
    assert first == second and first[0] == 200 and len(first[1]) == 50
