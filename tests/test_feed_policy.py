"""The feed actor's pure parts: reconnect policy, latest-wins candles, stream-keyed sequences."""
from marketfeed.feeds.base import Gap
from marketfeed.feeds.pipeline import LiveCandles
from marketfeed.feeds.rows import Candle, Trade
from marketfeed.feeds.sequence import SequenceTracker
from marketfeed.supervision.backoff import Backoff
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.supervision.reconnect import FAILED, RETRYING, ReconnectPolicy


def policy(urls=("ws://a", "ws://b"), failures=3, reset_s=60.0):
    return ReconnectPolicy(urls, Backoff(1.0, 30.0, jitter=0.0), CircuitBreaker(failures, reset_s))


def test_failed_connects_try_the_alternative_urls_in_turn():
    p = policy()
    assert p.url == "ws://a"
    p.ended(0.0)
    assert p.url == "ws://b"
    p.ended(1.0)
    assert p.url == "ws://a"


def test_a_connection_that_worked_reconnects_to_the_same_url():
    p = policy()
    p.ended(0.0)
    p.connected(1.0)
    assert p.ended(2.0).state == RETRYING and p.url == "ws://b"


def test_backoff_grows_capped_and_resets_after_a_stable_connection():
    p = policy(urls=("ws://a",), failures=100)
    delays = [p.ended(float(t)).delay_s for t in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    p.connected(100.0)
    assert p.ended(200.0).delay_s == 1.0


def test_three_failed_connects_open_the_breaker_and_a_trial_after_the_cool_down():
    p = policy()
    assert p.ended(0.0).state == RETRYING
    assert p.ended(1.0).state == RETRYING
    third = p.ended(2.0)
    assert third == type(third)(60.0, FAILED)  # next try is the half-open trial, 60 s later
    assert p.ended(62.0) == type(third)(60.0, FAILED)  # the trial failed: a full cool-down again
    p.connected(122.0)
    assert p.failures == 0 and p.breaker.state(122.0) == "closed"


def test_a_refused_subscription_opens_the_breaker_at_once():
    p = policy()
    retry = p.rejected(5.0)
    assert retry.state == FAILED and retry.delay_s == 60.0
    assert p.rejected(70.0).delay_s == 60.0  # a refused trial re-opens


def candle(ts, close, closed=False, interval="1m"):
    return Candle(ts, "binance", "BTCUSDT", interval, 1.0, 2.0, 0.5, close, 3.0, closed, 0)


def test_live_candles_keep_only_the_latest_state_per_key():
    live = LiveCandles()
    live.update([candle(60, 1.0), candle(60, 2.0), candle(60, 3.0, interval="5m")])
    live.update([candle(120, 4.0), candle(60, 5.0)])  # an older period's late update does not win
    assert sorted(live.take()) == sorted([candle(120, 4.0), candle(60, 3.0, interval="5m")])
    assert len(live) == 0


def test_a_closed_candle_retires_the_in_progress_state_of_its_period():
    live = LiveCandles()
    live.update([candle(60, 1.0)])
    live.close([candle(60, 1.5, closed=True)])
    live.update([candle(60, 9.0)])  # arrives late: the closed row is final
    assert live.take() == []
    live.update([candle(120, 2.0)])
    assert live.take() == [candle(120, 2.0)]


def trade(exchange, symbol, trade_id):
    return Trade(0, exchange, symbol, trade_id, 1.0, 1.0, "buy", 0)


def test_sequences_are_tracked_per_stream_key():
    key = lambda row: row.symbol + ("@agg" if row.exchange == "agg" else "")  # noqa: E731
    s = SequenceTracker({}, key)
    assert s.observe([trade("t", "A", 10), trade("agg", "A", 500), trade("t", "A", 11), trade("agg", "A", 501)]) == []
    assert s.observe([trade("agg", "A", 504), trade("t", "A", 12)]) == [Gap("A", 502, 503, stream="A@agg")]
    assert s.last_ids == {"A": 12, "A@agg": 504}


def test_the_tracker_writes_through_to_the_memory_it_was_given():
    memory: dict[str, int] = {}
    SequenceTracker(memory).observe([trade("t", "A", 7)])
    assert memory == {"A": 7}  # a restarted feed actor continues from here


def test_after_a_reconnect_everything_since_the_last_id_of_each_stream_is_asked_for():
    key = lambda row: row.symbol + ("@agg" if row.exchange == "agg" else "")  # noqa: E731
    s = SequenceTracker({"B": 3}, key)
    s.observe([trade("t", "A", 10), trade("agg", "A", 500)])
    s.fill([trade("agg", "A", 503), trade("agg", "A", 502)])  # backfilled rows advance, never reveal gaps
    assert s.since_last() == [Gap("B", 4, None, stream="B"), Gap("A", 11, None, stream="A"),
                              Gap("A", 504, None, stream="A@agg")]
