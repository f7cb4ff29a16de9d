"""The connection watch alone: stale, pong timeout, age roll, ping and the rate ceiling, with the clock passed in."""
from marketfeed.supervision.watch import ConnectionWatch, RateChange, Verdict, WatchLimits


def watch(**limits) -> ConnectionWatch:
    w = ConnectionWatch(WatchLimits(**{"stale_after_s": 30.0, **limits}))
    w.connected(0.0, 0)
    return w


def test_nothing_is_decided_without_a_connection():
    w = ConnectionWatch(WatchLimits(stale_after_s=1.0))
    assert w.decide(100.0) is None
    w.connected(0.0, 0)
    w.ended()
    assert w.decide(100.0) is None


def test_silence_past_stale_after_s_is_stale_and_data_keeps_it_alive():
    w = watch()
    assert w.decide(30.0) is None  # at the limit, not past it
    w.data(29.0)
    assert w.decide(59.0) is None
    assert w.decide(59.5) is Verdict.STALE
    assert w.silent_s(59.5) == 30.5


def test_a_writer_behind_makes_the_silence_ours_and_extends_the_pong_deadline():
    w = watch(ping_interval_s=10.0, pong_timeout_s=5.0)
    assert w.decide(10.0) is Verdict.PING
    w.writer(14.0, behind=True)
    assert w.pong_due_at == 19.0
    assert w.decide(18.0) is None


def test_the_silence_after_a_writer_caught_up_counts_from_the_first_tick_after():
    w = watch(stale_after_s=0.5)
    w.writer(14.0, behind=True)
    w.writer(15.0, behind=False)  # caught up somewhere in between; the reader's first batch may not be here yet
    assert w.decide(15.0) is None
    w.writer(16.0, behind=False)
    assert w.decide(16.0) is Verdict.STALE  # from then on the silence is the exchange's again


def test_ping_on_its_interval_and_an_unanswered_one_times_out():
    w = watch(ping_interval_s=10.0, pong_timeout_s=5.0)
    assert w.decide(9.0) is None
    assert w.decide(10.0) is Verdict.PING
    w.data(12.0)
    assert w.decide(15.0) is None  # due at 15: not past it
    assert w.decide(15.5) is Verdict.PONG_TIMEOUT


def test_a_pong_clears_the_deadline_and_the_next_ping_follows_the_interval():
    w = watch(ping_interval_s=10.0, pong_timeout_s=5.0)
    assert w.decide(10.0) is Verdict.PING
    w.pong()
    w.data(16.0)
    assert w.decide(16.0) is None
    assert w.decide(20.0) is Verdict.PING


def test_no_ping_without_an_interval():
    w = watch(pong_timeout_s=5.0)
    w.data(29.0)
    assert w.decide(29.0) is None and w.pong_due_at is None


def test_a_connection_older_than_the_exchange_allows_is_rolled():
    w = watch(max_connection_age_s=100.0)
    w.data(99.0)
    assert w.decide(99.0) is None
    w.data(100.0)
    assert w.decide(100.0) is Verdict.ROLL
    assert w.age_s(100.0) == 100.0


def test_stale_comes_before_roll_and_ping():
    w = watch(max_connection_age_s=10.0, ping_interval_s=1.0)
    assert w.decide(31.0) is Verdict.STALE


def test_the_rate_flag_changes_once_each_way_and_a_new_connection_starts_afresh():
    w = watch(max_messages_per_s=100.0)
    assert w.rate_change(1.0, 50) is None
    assert w.rate_change(2.0, 250) is RateChange.EXCEEDED and w.rate.flagged
    assert w.rate_change(3.0, 500) is None  # still above: no new change
    assert w.rate_change(4.0, 510) is RateChange.NORMAL
    w.rate_change(5.0, 1000)
    w.connected(5.0, 1000)
    assert not w.rate.flagged and w.rate.rate == 0.0


def test_no_ceiling_never_flags():
    w = watch()
    assert w.rate_change(1.0, 10**9) is None and not w.rate.flagged
