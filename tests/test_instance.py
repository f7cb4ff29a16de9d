"""Which instance a process is and its share of the market (config/instance.py, feeds/shards.py InstanceShard)."""
from __future__ import annotations

import pytest

from marketfeed.config.instance import LEAD_WINDOW_S, InstanceError, Peer, instance_of, leads, peer_problems, sharded
from marketfeed.config.loader import from_dict
from marketfeed.feeds.shards import InstanceShard

SYMBOLS = [f"SYM{i:04d}USDT" for i in range(3000)]


def config(service=None, feeds=None):
    return from_dict({"service": service or {}, "feeds": feeds or [
        {"name": "spot", "exchange": "binance", "url": "ws://h", "symbols": SYMBOLS[:30]}]})


def test_n_shards_carry_every_symbol_exactly_once_and_evenly():
    shares = [InstanceShard(k, 3).share(SYMBOLS) for k in range(3)]
    assert sorted(s for share in shares for s in share) == sorted(SYMBOLS)
    assert all(900 <= len(share) <= 1100 for share in shares)
    assert InstanceShard(1, 3).share(SYMBOLS) == InstanceShard(1, 3).share(reversed(SYMBOLS))[::-1]


def test_the_shard_is_the_same_in_every_process_and_case():
    assert InstanceShard(0, 7).takes("btcusdt") == InstanceShard(0, 7).takes("BTCUSDT")
    assert [k for k in range(7) if InstanceShard(k, 7).takes("BTCUSDT")] == [5]  # a stable hash, not hash()


@pytest.mark.parametrize(("spec", "host", "expected"), [
    ("", "vm1", None), ("0/3", "vm1", InstanceShard(0, 3)), ("auto/3", "marketfeed-2", InstanceShard(2, 3)),
])
def test_shard_specs(spec, host, expected):
    assert InstanceShard.parse(spec, host) == expected


@pytest.mark.parametrize(("spec", "host", "why"), [
    ("3/3", "vm1", "0 <= K < N"), ("auto/3", "vm1", "has none"), ("auto/3", "marketfeed-3", "0 <= K < N"),
])
def test_a_bad_shard_names_the_key(spec, host, why):
    with pytest.raises(InstanceError, match=f"service.shard: .*{why}"):
        instance_of(config({"shard": spec}), host)


def test_the_instance_defaults_to_the_host_and_a_group_of_its_own():
    instance = instance_of(config(), "vm1")
    assert instance.describe() == {"id": "vm1", "group": "vm1", "shard": ""}
    paired = instance_of(config({"instance_id": "a", "instance_group": "split", "shard": "1/2"}), "vm1")
    assert paired.describe() == {"id": "a", "group": "split", "shard": "1/2"}
    with pytest.raises(InstanceError, match=r"service\.instance_id"):
        instance_of(config(), "bad host")


def test_a_plain_symbol_list_is_cut_to_the_share_and_an_empty_share_is_an_error():
    cut = sharded(config(), InstanceShard(1, 3))
    assert cut.feeds[0].symbols == InstanceShard(1, 3).share(SYMBOLS[:30]) and cut.feeds[0].symbols
    one = config(feeds=[{"name": "one", "exchange": "binance", "url": "ws://h", "symbols": ["BTCUSDT"]}])
    with pytest.raises(InstanceError, match="leaves feed 'one' none of its 1 symbols"):
        sharded(one, InstanceShard(0, 7))
    assert sharded(one, InstanceShard(5, 7)).feeds[0].symbols == ("BTCUSDT",)


def test_a_whole_market_is_cut_by_the_feed_and_an_exchange_wildcard_cannot_be_split():
    market = config(feeds=[{"name": "all", "exchange": "binance", "url": "ws://h", "rest_url": "http://h",
                            "symbols": ["*"]}])
    assert sharded(market, InstanceShard(0, 3)) == market
    polygon = config(feeds=[{"name": "whales", "exchange": "polygon", "url": "ws://h/options", "symbols": ["*"],
                             "api_key": "k"}])
    with pytest.raises(InstanceError, match="wildcard '\\*'"):
        sharded(polygon, InstanceShard(0, 2))


def peer(id_, group, shard="", pid=1, started=100.0, seen=200.0, host="h"):
    return Peer(id_, group, shard, host, pid, started, seen)


def test_peers_an_ha_partner_a_doubled_id_and_overlapping_shards():
    me = peer("a", "a", "0/3", pid=1)
    partner, other_shard = peer("b", "b", "0/3", pid=2), peer("c", "b", "1/3", pid=3)
    assert peer_problems(me, [me, partner, other_shard]) == ([], ["b"])
    doubled = peer("a", "a", "0/3", pid=9, host="h2")
    assert peer_problems(me, [me, doubled])[0] == ["instance id 'a' is also used by pid 9 on h2"]
    predecessor = peer("a", "a", "0/3", pid=7, started=10.0, seen=99.0)  # killed before I began: its last beats
    assert peer_problems(me, [me, predecessor]) == ([], [])
    split = peer("s", "split", "1/3")
    for shard, overlaps in (("1/3", True), ("2/3", False), ("0/2", True), ("", True)):
        problems, _ = peer_problems(split, [split, peer("t", "split", shard, pid=5)])
        assert bool(problems) == overlaps, shard


def test_one_instance_of_a_shard_writes_the_candles_in_progress_and_its_partner_takes_over():
    a, b = peer("a", "a", pid=1, seen=200.0), peer("b", "b", pid=2, seen=200.0)
    assert leads(a, [a, b], 201.0) and not leads(b, [a, b], 201.0)
    assert leads(b, [a, b], 200.0 + LEAD_WINDOW_S + 1)  # a's heartbeats stopped: b writes them now
    assert leads(b, [b], 201.0)  # alone (or before the others are known)
    other_shard = peer("0", "x", "1/2", pid=3)
    assert leads(a, [a, other_shard], 201.0)
