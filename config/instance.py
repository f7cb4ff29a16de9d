"""Which instance this process is, and what of the market it carries (README, high availability and scale-out).

Pure: the host name is passed in. Several instances write into one QuestDB, whose DEDUP UPSERT KEYS make a row
written twice one row: two instances with the same feeds are an HA pair; N instances with service.shard 0/N …
N-1/N split every feed's symbols between them by a stable hash (feeds/shards.py InstanceShard).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from marketfeed.config.schema import INSTANCE_CHOICES, Config, FeedConfig
from marketfeed.feeds.registry import exchange
from marketfeed.feeds.shards import InstanceShard
from marketfeed.feeds.universe import UniverseSpec


@dataclass(frozen=True)
class Instance:
    id: str  # service.instance_id, else the host name
    group: str  # service.instance_group, else its own id: a group of one
    shard: InstanceShard | None  # None: every symbol

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "group": self.group, "shard": str(self.shard) if self.shard else ""}


class InstanceError(ValueError):
    """A [service] instance key that cannot be used; the message starts with the key."""


def instance_of(config: Config, hostname: str) -> Instance:
    service = config.service
    instance_id = service.instance_id or hostname
    if instance_id not in INSTANCE_CHOICES or not instance_id:
        raise InstanceError(f"service.instance_id: {instance_id!r} is not a name like {next(iter(INSTANCE_CHOICES))}")
    try:
        shard = InstanceShard.parse(service.shard, hostname)
    except ValueError as exc:
        raise InstanceError(f"service.shard: {exc}") from None
    return Instance(instance_id, service.instance_group or instance_id, shard)


def sharded(config: Config, shard: InstanceShard | None) -> Config:
    """The config with each feed's plain symbol list cut to this shard's share. A whole-market feed (patterns) is
    cut once its listing is read, by the feed itself; an exchange's own wildcard (Polygon T.*) cannot be split."""
    if shard is None or shard.n == 1:
        return config
    feeds = []
    for feed in config.feeds:
        if UniverseSpec.of(feed) is None:
            share = shard.share(feed.symbols)
            if not share:
                raise InstanceError(f"service.shard: {shard} leaves feed {feed.name!r} none of its "
                                    f"{len(feed.symbols)} symbols; give it more symbols or fewer shards")
            feeds.append(dataclasses.replace(feed, symbols=share))
        elif _wildcard(feed):
            raise InstanceError(f"service.shard: feed {feed.name!r} subscribes to the exchange's own wildcard "
                                f"{feed.symbols[0]!r}, which cannot be split between instances; run it unsharded")
        else:
            feeds.append(feed)
    return dataclasses.replace(config, feeds=tuple(feeds))


def _wildcard(feed: FeedConfig) -> bool:
    return exchange(feed.exchange).protocol(feed).listing_request() is None


@dataclass(frozen=True)
class Peer:
    """An instance as its heartbeat row in QuestDB shows it (storage/instances.py)."""

    id: str
    group: str
    shard: str  # "K/N", "" for every symbol
    host: str
    pid: int
    started_at_s: float
    seen_s: float = 0.0  # its newest heartbeat

    def same_process(self, other: Peer) -> bool:
        return (self.host, self.pid) == (other.host, other.pid) and abs(self.started_at_s - other.started_at_s) < 1e-3


def _overlap(a: str, b: str) -> bool:
    """Whether two shard specs of one group can carry the same symbol."""
    if not a or not b:
        return True  # one carries everything
    (ka, na), (kb, nb) = (tuple(map(int, s.split("/"))) for s in (a, b))
    return na != nb or ka == kb  # different N: their hashes mod N meet; the same K/N: the same share


def peer_problems(me: Peer, peers: list[Peer]) -> tuple[list[str], list[str]]:
    """(problems, partners) among the instances heartbeating into the same QuestDB and prefix: another process with
    my instance id, or an instance of my group whose shard overlaps mine, is a problem; an instance of another group
    with my shard is my HA partner."""
    problems: list[str] = []
    partners: list[str] = []
    for peer in peers:
        if peer.same_process(me):
            continue
        if peer.id == me.id:
            if peer.seen_s > me.started_at_s:  # alive since I began: not my predecessor's last beats
                problems.append(f"instance id {me.id!r} is also used by pid {peer.pid} on {peer.host}")
        elif peer.group == me.group and _overlap(peer.shard, me.shard):
            problems.append(f"instance {peer.id!r} of group {me.group!r} carries shard {peer.shard or 'all'}, "
                            f"overlapping this one's {me.shard or 'all'}")
        elif peer.group != me.group and peer.shard == me.shard:
            partners.append(peer.id)
    return sorted(set(problems)), sorted(set(partners))


LEAD_WINDOW_S = 15.0  # three missed heartbeats: the instance is gone, its partner takes over


def leads(me: Peer, peers: list[Peer], now_s: float) -> bool:
    """Whether this instance writes the candles in progress of its shard: the smallest id among the live instances
    carrying that shard. DEDUP keeps the last row written: two writers of in-progress states could each land an
    older state after the other's newer one, so only one writes them (every instance writes closed candles, the
    exchange's final state, after its own in-progress ones)."""
    alive = {p.id for p in peers if p.shard == me.shard and (p.same_process(me) or
                                                              (p.id != me.id and now_s - p.seen_s < LEAD_WINDOW_S))}
    return min(alive | {me.id}) == me.id
