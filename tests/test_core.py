"""The functional core: backoff, restart intensity, breaker, dedup window, sequence tracker, batcher."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketfeed.feeds.base import Gap
from marketfeed.feeds.dedup import DedupWindow
from marketfeed.feeds.rows import Trade
from marketfeed.feeds.sequence import SequenceTracker
from marketfeed.storage.batching import Batcher
from marketfeed.supervision.backoff import Backoff, RestartIntensity
from marketfeed.supervision.breaker import CircuitBreaker
from marketfeed.telemetry.report import BreakerState


def trade(symbol: str, trade_id: int) -> Trade:
    return Trade(trade_id * 1000, "binance", symbol, trade_id, 1.0, 1.0, "buy", 0)


def test_backoff_grows_exponentially_to_the_cap_and_resets():
    b = Backoff(0.5, 4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_within_bounds():
    low = Backoff(1.0, 100.0, jitter=0.25, rng=lambda: 0.0)
    high = Backoff(1.0, 100.0, jitter=0.25, rng=lambda: 0.999999)
    assert low.next_delay() == pytest.approx(0.75)
    assert high.next_delay() == pytest.approx(1.25, rel=1e-3)
    capped = Backoff(1.0, 1.0, jitter=0.5, rng=lambda: 0.999)
    assert capped.next_delay() <= 1.0


def test_backoff_rejects_inverted_bounds():
    with pytest.raises(ValueError):
        Backoff(5.0, 1.0)


def test_restart_intensity_is_a_sliding_window():
    r = RestartIntensity(max_restarts=2, within_s=10.0)
    assert r.record(0.0) and r.record(5.0)
    assert not r.record(9.0)  # third within 10 s
    r2 = RestartIntensity(max_restarts=2, within_s=10.0)
    assert r2.record(0.0) and r2.record(5.0)
    assert r2.record(10.5)  # the restart at 0.0 has slid out of the window
    assert not r2.record(11.0)


def test_breaker_opens_after_threshold_half_opens_after_cooldown():
    b = CircuitBreaker(failure_threshold=3, reset_after_s=60.0)
    for t in (0.0, 1.0):
        b.failure(t)
        assert b.state(t) == BreakerState.CLOSED
    b.failure(2.0)
    assert b.state(2.0) == BreakerState.OPEN and not b.allow(30.0)
    assert b.state(62.0) == BreakerState.HALF_OPEN and b.allow(62.0)
    b.failure(62.0)  # the trial failed: open again for a full cool-down
    assert b.state(100.0) == BreakerState.OPEN and b.state(122.0) == BreakerState.HALF_OPEN
    b.success()
    assert b.state(122.0) == BreakerState.CLOSED and b.failures == 0


def test_dedup_drops_repeats_within_the_window_only():
    d = DedupWindow(window_s=10.0, max_entries=100)
    assert d.fresh([trade("A", 1), trade("A", 2), trade("B", 1)], now=0.0) == [
        trade("A", 1), trade("A", 2), trade("B", 1)]
    assert d.fresh([trade("A", 2), trade("A", 3)], now=1.0) == [trade("A", 3)]
    assert d.dropped == 1
    assert d.fresh([trade("A", 1)], now=20.0) == [trade("A", 1)]  # expired from the window


def test_dedup_is_bounded_by_entries():
    d = DedupWindow(window_s=1e9, max_entries=3)
    d.fresh([trade("A", i) for i in range(10)], now=0.0)
    assert len(d) <= 3
    assert d.fresh([trade("A", 9)], now=0.0) == []
    assert d.fresh([trade("A", 0)], now=0.0) == [trade("A", 0)]


def test_sequence_tracker_reports_gaps_per_symbol():
    s = SequenceTracker()
    assert s.observe([trade("A", 1), trade("A", 2), trade("B", 10)]) == []
    # The gap carries the event time of the trade before it (A 2): REST paged by time starts there.
    assert s.observe([trade("A", 5), trade("B", 11), trade("A", 6)]) == [Gap("A", 3, 4, before_ns=trade("A", 2).ts_ns)]
    assert s.observe([trade("A", 4)]) == []  # a late id: not a gap, not a regression
    assert s.last_ids == {"A": 6, "B": 11}


def test_sequence_tracker_continues_from_remembered_ids():
    s = SequenceTracker({"A": 100})
    assert s.observe([trade("A", 104)]) == [Gap("A", 101, 103)]  # the time of id 100 is unknown (from QuestDB)


def test_sequence_tracker_gives_every_gap_after_a_reconnect_the_time_of_the_last_id():
    s = SequenceTracker()
    s.observe([trade("A", 1), trade("A", 2)])
    s.fill([trade("A", 3)])
    s.observe([trade("A", 1)])  # a replay moves nothing
    assert s.since_last() == [Gap("A", 4, None, before_ns=trade("A", 3).ts_ns)]


def test_an_implausible_jump_moves_nothing_and_asks_rest_for_that_one_id_once():
    s = SequenceTracker({"A": 100}, max_jump=1000)
    fake = trade("A", 10**12)._replace(received_ns=5)
    assert s.observe([fake, trade("A", 101)]) == [Gap("A", 10**12, 10**12)]  # the question, not a gap up to it
    assert s.take_refused() == [fake] and s.last_ids == {"A": 101}  # detection goes on from the real position
    assert s.observe([trade("A", 10**12 + 7)._replace(received_ns=6)]) == []  # one question at a time
    assert s.take_refused() and s.observe([trade("A", 103)]) == [Gap("A", 102, 102, before_ns=trade("A", 101).ts_ns)]
    assert s.fill([]) == [] and s.last_ids == {"A": 103}  # REST had nothing: the fake id never counts


def test_a_jump_rest_confirms_becomes_the_gap_up_to_it():
    s = SequenceTracker({"A": 100}, max_jump=1000)
    s.observe([trade("A", 5000)])
    assert s.take_refused() == [trade("A", 5000)]
    assert s.fill([trade("A", 5000)]) == [Gap("A", 101, 4999)]  # the exchange has it: what lies between is missing
    assert s.last_ids == {"A": 5000} and s.observe([trade("A", 5001)]) == []
    assert SequenceTracker({"A": 100}).observe([trade("A", 5000)]) == [Gap("A", 101, 4999)]  # 0: any jump trusted


def test_batcher_flushes_on_size_or_age():
    b = Batcher(max_rows=3, flush_interval_s=1.0)
    assert not b.due(0.0)
    b.add([1, 2], now=10.0)
    assert b.deadline() == 11.0 and not b.due(10.5) and b.due(11.0)
    b.add([3], now=10.6)
    assert b.full() and b.due(10.6)
    assert b.take(2) == [1, 2] and b.rows == [3]
    assert b.take() == [3] and b.deadline() is None


def test_dedup_remembers_every_key_for_at_least_the_window_across_generations():
    d = DedupWindow(window_s=10.0, max_entries=1000)
    d.fresh([trade("A", 1)], now=0.0)
    d.fresh([trade("A", 2)], now=9.9)
    d.fresh([trade("A", 3)], now=10.0)  # a new generation begins
    assert d.fresh([trade("A", 2), trade("A", 3)], now=19.8) == []
    assert d.fresh([trade("A", 1), trade("A", 3)], now=30.0) == [trade("A", 1), trade("A", 3)]  # two windows on


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from("AB"), st.integers(0, 12)), max_size=8),
                          st.floats(0.0, 4.0)), max_size=12),
       st.integers(1, 12))
def test_dedup_batches_match_one_row_at_a_time(batches, max_entries):
    """Whole batches (the set fast path included) decide exactly as the same rows offered one by one."""
    by_batch, by_row, now = DedupWindow(5.0, max_entries), DedupWindow(5.0, max_entries), 0.0
    for keys, step in batches:
        now += step
        rows = [trade(symbol, trade_id) for symbol, trade_id in keys]
        by_row.fresh([], now)  # a call moves the window on even with no rows: both see the same calls' times
        assert by_batch.fresh(rows, now) == [kept for row in rows for kept in by_row.fresh([row], now)]
    assert by_batch.dropped == by_row.dropped and len(by_batch) == len(by_row)
