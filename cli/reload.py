"""SIGHUP: what a new config changes, as a plan the service applies (pure, no actors here).

Feeds are reloaded one by one: added, removed or changed feeds are started, stopped or restarted,
the others keep their connections. Alert thresholds and the health intervals apply at once;
the remaining sections (QuestDB, sink, supervisor, files, HTTP) take effect at the next restart.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from marketfeed.config.schema import Config, FeedConfig, ServiceConfig

# Service keys the running process picks up on reload; any other change needs a restart.
LIVE_SERVICE_KEYS = ("health_interval_s", "status_interval_s", "log_level")


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[FeedConfig, ...]
    removed: tuple[str, ...]
    changed: tuple[FeedConfig, ...]
    restart_needed: tuple[str, ...]  # "section" or "section.key" whose new value waits for a restart

    @property
    def feeds_touched(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def plan(old: Config, new: Config) -> ReloadPlan:
    old_feeds = {f.name: f for f in old.feeds}
    new_feeds = {f.name: f for f in new.feeds}
    restart_needed = [name for name in ("questdb", "sink", "supervisor") if getattr(old, name) != getattr(new, name)]
    restart_needed += [f"service.{f.name}" for f in dataclasses.fields(ServiceConfig)
                       if f.name not in LIVE_SERVICE_KEYS
                       and getattr(old.service, f.name) != getattr(new.service, f.name)]
    return ReloadPlan(
        added=tuple(f for name, f in new_feeds.items() if name not in old_feeds),
        removed=tuple(name for name in old_feeds if name not in new_feeds),
        changed=tuple(f for name, f in new_feeds.items() if name in old_feeds and old_feeds[name] != f),
        restart_needed=tuple(restart_needed),
    )


def applied(old: Config, new: Config) -> Config:
    """The config the process runs after the reload: new feeds, alerts and live keys; the rest as before."""
    live = {key: getattr(new.service, key) for key in LIVE_SERVICE_KEYS}
    return dataclasses.replace(old, feeds=new.feeds, alerts=new.alerts, source=new.source,
                               service=dataclasses.replace(old.service, **live))
