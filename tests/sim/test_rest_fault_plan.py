"""RestFaultPlan, the pure decision behind the REST faults: injected answers in order, Binance's weight minute
and its ban after ignored 429s, all on a clock the test moves."""
import pytest

from marketfeed.sim.faults import RestDecision, RestFaultPlan, RestVerdict, WeightLimit

SERVE, LIMITED, BANNED, ERROR = RestVerdict.SERVE, RestVerdict.LIMITED, RestVerdict.BANNED, RestVerdict.ERROR


def test_injected_answers_come_in_the_order_given_each_for_its_count_then_the_twin_serves():
    plan = RestFaultPlan()
    plan.throttle(2, None)
    plan.fail(1, 503, 7)
    plan.throttle(1, 3)
    assert [plan.decide(float(t), 1) for t in range(5)] == [
        RestDecision(LIMITED), RestDecision(LIMITED), RestDecision(ERROR, 7, 503), RestDecision(LIMITED, 3),
        RestDecision(SERVE)]


def test_weight_adds_up_within_a_minute_and_starts_again_at_the_next():
    plan = RestFaultPlan(WeightLimit(limit=100, minute_s=10.0), start=1000.0)
    assert [plan.decide(t, 25).used_weight for t in (1000.0, 1003.0, 1009.9)] == [25, 50, 75]
    assert plan.decide(1010.0, 25) == RestDecision(SERVE, used_weight=25)  # minutes count from the start


def test_past_the_limit_429_until_the_minute_ends_spending_weight_then_served_again():
    plan = RestFaultPlan(WeightLimit(limit=50, minute_s=60.0, ban_after=3), start=0.0)
    assert plan.decide(0.0, 25).verdict is SERVE and plan.decide(1.0, 25).verdict is SERVE
    assert plan.decide(20.5, 25) == RestDecision(LIMITED, 40, used_weight=75)  # ceil(60 - 20.5)
    assert plan.decide(60.0, 25) == RestDecision(SERVE, used_weight=25)


def test_429s_ignored_in_a_row_make_a_ban_that_lasts_ban_s_and_does_not_grow_when_retried():
    plan = RestFaultPlan(WeightLimit(limit=10, minute_s=60.0, ban_after=2, ban_s=30.0), start=0.0)
    plan.throttle(1, 5)
    assert plan.decide(0.0, 1) == RestDecision(LIMITED, 5, used_weight=0)
    assert plan.decide(1.0, 25).verdict is LIMITED  # before the Retry-After ran out: ignored once; over weight
    assert plan.decide(2.0, 25) == RestDecision(BANNED, 30, used_weight=50, banned_until=32.0)
    assert plan.decide(31.5, 25) == RestDecision(BANNED, 1, used_weight=50, banned_until=32.0)  # no weight spent
    assert plan.decide(60.0, 1) == RestDecision(SERVE, used_weight=1)


def test_a_client_that_waits_out_each_retry_after_is_never_banned():
    plan = RestFaultPlan(WeightLimit(ban_after=1), start=0.0)
    plan.throttle(5, 2)
    assert [plan.decide(2.0 * k, 1).verdict for k in range(6)] == [LIMITED] * 5 + [SERVE]


def test_injected_answers_spend_no_weight_but_report_it():
    plan = RestFaultPlan(WeightLimit(limit=100), start=0.0)
    plan.decide(0.0, 20)
    plan.fail(1, 500, None)
    assert plan.decide(1.0, 20) == RestDecision(ERROR, None, 500, used_weight=20)
    assert plan.decide(2.0, 20).used_weight == 40


def test_a_ban_comes_before_every_other_answer_and_needs_a_weight_budget():
    plan = RestFaultPlan(WeightLimit(), start=0.0)
    plan.throttle(1, 1)
    plan.ban(10.0, 2.5)
    assert plan.decide(11.0, 1) == RestDecision(BANNED, 2, used_weight=0, banned_until=12.5)
    assert plan.decide(12.5, 1).verdict is LIMITED  # the throttle waited its turn
    with pytest.raises(ValueError, match="bans IPs"):
        RestFaultPlan().ban(0.0, 1.0)
