"""Sharding a feed's symbols over connections (feeds/shards.py), pacing connects (supervision/pacing.py)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketfeed.feeds.shards import ShardError, ShardPlan, symbols_per_connection
from marketfeed.supervision.pacing import BUDGET_SHARE, ConnectPacer, message_interval_s


def names(n: int, prefix: str = "S") -> list[str]:
    return [f"{prefix}{i:05d}USDT" for i in range(n)]


def test_capacity_is_the_documented_stream_limit_over_the_streams_per_symbol():
    assert symbols_per_connection(1024, 2) == 512
    assert symbols_per_connection(1024, 1, configured_max_streams=100) == 100
    assert symbols_per_connection(0, 3) == 0  # no documented limit: one connection carries all
    with pytest.raises(ShardError, match="costs 3 streams"):
        symbols_per_connection(2, 3)


def test_3000_streams_open_three_even_connections_in_listing_order():
    plan = ShardPlan(symbols_per_connection(1024, 1))
    change = plan.update(names(3000))
    assert len(change.opened) == math.ceil(3000 / 1024) == 3
    assert [len(s) for s in change.opened.values()] == [1000, 1000, 1000]
    assert [s for shard in change.opened.values() for s in shard] == names(3000)
    assert not change.changed and not change.closed


def test_a_listing_joins_the_connection_with_most_room_and_a_delisting_touches_only_its_own():
    plan = ShardPlan(10)
    plan.update(names(25))  # 3 connections: 9, 9, 7
    assert {i: len(s) for i, s in plan.shards.items()} == {0: 9, 1: 9, 2: 7}
    change = plan.update([*names(25), "NEW1USDT"])
    assert change.added == ("NEW1USDT",) and not change.opened and not change.closed
    assert change.changed == {2: (*names(25)[18:], "NEW1USDT")}
    gone = plan.shards[0][0]
    change = plan.update([s for s in [*names(25), "NEW1USDT"] if s != gone])
    assert change.removed == (gone,) and list(change.changed) == [0] and gone not in change.changed[0]


def test_listings_beyond_every_connections_room_open_new_connections_and_emptied_ones_close():
    plan = ShardPlan(2)
    plan.update(["A", "B"])
    change = plan.update(["A", "B", "C", "D", "E"])
    assert change.opened == {1: ("C", "D"), 2: ("E",)} and not change.changed
    change = plan.update(["C", "D", "E"])
    assert change.closed == (0,) and change.removed == ("A", "B") and plan.shards == {1: ("C", "D"), 2: ("E",)}
    change = plan.update(["C", "D", "E", "F", "G", "H"])
    assert change.changed == {2: ("E", "F")} and change.opened == {3: ("G", "H")}  # index 0 is never reused


def test_more_connections_than_the_exchange_allows_is_refused_and_the_plan_kept():
    plan = ShardPlan(2, max_connections=2)
    plan.update(["A", "B", "C"])
    before = dict(plan.shards)
    with pytest.raises(ShardError, match="allows 2"):
        plan.update(["A", "B", "C", "D", "E"])
    assert plan.shards == before


@given(st.lists(st.sets(st.integers(0, 60)), min_size=1, max_size=6), st.integers(1, 16))
def test_every_symbol_is_carried_exactly_once_within_capacity(universes, capacity):
    plan = ShardPlan(capacity)
    for universe in universes:
        plan.update(f"S{i}" for i in universe)
        carried = [s for shard in plan.shards.values() for s in shard]
        assert sorted(carried) == sorted(f"S{i}" for i in universe)
        assert all(0 < len(shard) <= capacity for shard in plan.shards.values())


def test_the_pacer_keeps_attempts_inside_the_documented_window():
    pacer = ConnectPacer(300, 300.0)  # Binance: 300 connection attempts per 5 minutes per IP
    budget = int(300 * BUDGET_SHARE)
    assert all(pacer.attempt(0.0) == 0.0 for _ in range(budget))
    assert pacer.attempt(1.0) == pytest.approx(299.0)  # the window is full until the first attempt ages out
    assert pacer.attempt(300.0) == 0.0
    unpaced = ConnectPacer(0, 0.0)
    assert all(unpaced.attempt(0.0) == 0.0 for _ in range(10_000))


def test_subscribe_messages_are_spaced_below_the_per_connection_message_limit():
    interval = message_interval_s(5)  # Binance: 5 incoming messages per second, pings and pongs included
    assert 1 / interval <= 5 - 1
    assert message_interval_s(0) == 0.0
