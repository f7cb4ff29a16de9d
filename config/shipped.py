"""The operations files that ship with marketfeed, as package data: found alike in a checkout and an installed wheel."""
from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable


@dataclass(frozen=True)
class Shipped:
    path: str  # inside the marketfeed.config package (config/ in a checkout)
    what: str


SHIPPED: dict[str, Shipped] = {
    "example-config": Shipped("marketfeed.example.toml", "a config with every key, commented"),
    "config-schema": Shipped("marketfeed.schema.json", "the config's JSON Schema, for editors"),
    "systemd-unit": Shipped("marketfeed.service", "the hardened Type=notify unit"),
    "systemd-template": Shipped("marketfeed@.service", "the same unit for one shard: marketfeed@K-N.service"),
    "prometheus-rules": Shipped("prometheus/marketfeed.rules.yml", "alerting rules"),
    "grafana-dashboard": Shipped("grafana/marketfeed-dashboard.json", "a dashboard of the metrics"),
    "lnav-format": Shipped("lnav/marketfeed_log.json", "an lnav log format for the JSON log"),
}


def shipped_file(name: str) -> Traversable:
    """One shipped file by its name (a key of SHIPPED); KeyError names the known ones."""
    try:
        entry = SHIPPED[name]
    except KeyError:
        raise KeyError(f"no shipped file {name!r} (one of {', '.join(SHIPPED)})") from None
    return files("marketfeed.config").joinpath(entry.path)
