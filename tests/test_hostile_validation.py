"""The pure policies against hostile rows and floods: RowValidator, SampleGate, RateCeiling."""
from __future__ import annotations

import math

import pytest

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import ParsedRows
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.pipeline import FeedMemory, FeedPipeline
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.feeds.validation import (
    ANCIENT_TS,
    BAD_PRICE,
    BAD_SIDE,
    BAD_SIZE,
    BAD_TRADE_ID,
    BAD_TYPE,
    FUTURE_TS,
    OVERSIZED_STRING,
    PRICE_OUT_OF_RANGE,
    SIZE_OUT_OF_RANGE,
    UNKNOWN_SYMBOL,
    RateCeiling,
    RowValidator,
    SampleGate,
    sample_row,
)

NOW = 1_700_000_000 * 10**9
GOOD = Trade(NOW - 10**9, "binance", "BTCUSDT", 42, 100.5, 0.25, "buy", NOW)
CANDLE = Candle(NOW - 60 * 10**9, "binance", "BTCUSDT", "1m", 1.0, 2.0, 0.5, 1.5, 0.0, True, NOW)
validator = RowValidator(["BTCUSDT", "eth-usd"], max_future_skew_s=5.0, max_string_len=16)


@pytest.mark.parametrize("change, reason", [
    ({"price": math.nan}, BAD_PRICE), ({"price": math.inf}, BAD_PRICE), ({"price": 0.0}, BAD_PRICE),
    ({"price": -1.0}, BAD_PRICE), ({"amount": 0.0}, BAD_SIZE), ({"amount": -2.0}, BAD_SIZE),
    ({"amount": math.nan}, BAD_SIZE), ({"ts_ns": NOW + 6 * 10**9}, FUTURE_TS), ({"ts_ns": 10**18}, ANCIENT_TS),
    ({"ts_ns": "1700000000000"}, BAD_TYPE), ({"ts_ns": 1.7e18}, BAD_TYPE), ({"symbol": "DOGEUSDT"}, UNKNOWN_SYMBOL),
    ({"symbol": "B" * 17}, OVERSIZED_STRING), ({"symbol": ["BTCUSDT"]}, BAD_TYPE), ({"price": "100"}, BAD_TYPE),
    ({"trade_id": -1}, BAD_TRADE_ID), ({"trade_id": 2**63}, BAD_TRADE_ID), ({"trade_id": "42"}, BAD_TYPE),
    ({"side": "up"}, BAD_SIDE),
])
def test_each_kind_of_bad_trade_is_rejected_for_its_reason(change, reason):
    bad = GOOD._replace(**change)
    assert validator.split([GOOD, bad, GOOD], NOW) == ([GOOD, GOOD], [(bad, reason)])


def test_valid_rows_pass_as_the_same_list_and_symbols_match_in_either_case():
    rows: list[Trade | Candle] = [GOOD, GOOD._replace(symbol="ETH-USD"),
                                  GOOD._replace(symbol="btcusdt", ts_ns=NOW + 5 * 10**9), CANDLE]
    valid, rejected = validator.split(rows, NOW)
    assert valid is rows and rejected == []


@pytest.mark.parametrize("change, reason", [
    ({"low": 0.0}, BAD_PRICE), ({"close": math.nan}, BAD_PRICE), ({"volume": -1.0}, BAD_SIZE),
    ({"interval": "1" * 17}, OVERSIZED_STRING), ({"interval": 60}, BAD_TYPE), ({"symbol": "XRPUSDT"}, UNKNOWN_SYMBOL),
])
def test_bad_candles_are_rejected_for_their_reason(change, reason):
    bad = CANDLE._replace(**change)
    assert validator.split([bad], NOW) == ([], [(bad, reason)])


def test_a_dead_letter_sample_is_cut_to_size_and_fit_for_json():
    row = sample_row(GOOD._replace(symbol="S" * 1000, trade_id=2**70, price=math.nan))
    fields = row._asdict()  # by name: the values are no longer of the row type's field types (the id is text)
    assert type(row) is Trade
    assert fields["symbol"] == "S" * 200 and fields["trade_id"] == str(2**70) and math.isnan(fields["price"])


def test_sample_gate_lets_one_sample_per_reason_per_interval():
    gate = SampleGate(60.0)
    seen = [gate.due("a", 0.0), gate.due("a", 1.0), gate.due("b", 1.0), gate.due("a", 61.0)]
    assert seen == [True, False, True, True]


def test_rate_ceiling_flags_while_above_and_clears_below():
    ceiling = RateCeiling(100.0)
    assert ceiling.observe(0, 0.0) is False
    assert ceiling.observe(150, 1.0) is True and ceiling.flagged and ceiling.rate == 150.0
    assert ceiling.observe(300, 2.0) is False and ceiling.flagged  # still above: no change
    assert ceiling.observe(350, 3.0) is True and not ceiling.flagged
    ceiling.restart(350, 3.5)  # a new connection starts unflagged
    assert not ceiling.flagged and ceiling.observe(360, 4.5) is False


def test_no_ceiling_never_flags():
    ceiling = RateCeiling(0.0)
    ceiling.observe(0, 0.0)
    assert ceiling.observe(10**9, 1.0) is False and not ceiling.flagged


@pytest.mark.parametrize("change, reason", [
    ({"price": 1e308}, PRICE_OUT_OF_RANGE), ({"price": 5e-324}, PRICE_OUT_OF_RANGE),
    ({"price": 1.1e12}, PRICE_OUT_OF_RANGE), ({"price": 1e-13}, PRICE_OUT_OF_RANGE),
    ({"amount": 1e308}, SIZE_OUT_OF_RANGE), ({"amount": 5e-324}, SIZE_OUT_OF_RANGE),
    ({"amount": 2e15}, SIZE_OUT_OF_RANGE), ({"amount": 1e-13}, SIZE_OUT_OF_RANGE),
    ({"price": -math.inf}, BAD_PRICE), ({"amount": math.inf}, BAD_SIZE),
])
def test_absurd_and_subnormal_magnitudes_are_rejected(change, reason):
    bad = GOOD._replace(**change)
    assert validator.split([GOOD, bad], NOW) == ([GOOD], [(bad, reason)])


@pytest.mark.parametrize("change, reason", [
    ({"high": 1e308}, PRICE_OUT_OF_RANGE), ({"low": 5e-324}, PRICE_OUT_OF_RANGE),
    ({"volume": 5e-324}, SIZE_OUT_OF_RANGE), ({"volume": 1e300}, SIZE_OUT_OF_RANGE),
])
def test_candles_of_absurd_magnitudes_are_rejected(change, reason):
    bad = CANDLE._replace(**change)
    assert validator.split([bad], NOW) == ([], [(bad, reason)])


def test_the_bounds_let_real_extremes_through():
    """BTC quoted in IDR or VND, a meme coin quoted in BTC, a satoshi-sized lot, a bar of a trillion SHIB."""
    rows: list[Trade | Candle] = [GOOD._replace(price=2.6e9, amount=1e-8), GOOD._replace(price=1e-10, amount=5e11),
                                  CANDLE._replace(volume=1e12)]
    assert validator.split(rows, NOW) == (rows, [])


def test_a_rejected_price_does_not_claim_its_trade_id_so_the_real_trade_is_stored():
    config = FeedConfig(name="f", exchange="binance", url="ws://x", symbols=("BTCUSDT",))
    pipeline = FeedPipeline(config, BinanceProtocol(config), FeedMemory())
    forged, real = GOOD._replace(price=1e308), GOOD

    def burst(*trades: Trade) -> ParsedRows:
        rows = ParsedRows()
        rows.trades = list(trades)
        return rows

    first = pipeline.live(burst(forged), True, NOW, 0.0)
    assert "trades" not in first.rows and first.rejected[0].reasons == {PRICE_OUT_OF_RANGE: 1}
    assert first.rejected[0].samples == [(forged, f"rejected by validation: {PRICE_OUT_OF_RANGE} (feed f)")]
    second = pipeline.live(burst(real), True, NOW, 1.0)
    assert second.rows == {"trades": [real]} and second.duplicates == 0
    assert pipeline.rejected == {PRICE_OUT_OF_RANGE: 1}
