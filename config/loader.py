"""Load and validate the TOML config; every problem is reported at once, naming file and key
(or the environment variable the value came from).

Environment overrides: MARKETFEED_<SECTION>__<KEY>=value, e.g. MARKETFEED_QUESTDB__CONF=..., and for a
[[feeds]] table MARKETFEED_FEEDS__<FEED>__<KEY>, where <FEED> is the feed's name with every character
but letters and digits as "_" (feed "binance-spot": MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER_S), or
its index from 0 as problems count them (MARKETFEED_FEEDS__0__STALE_AFTER_S). Names are matched
case-insensitively; values are parsed as TOML scalars when they parse, else taken as strings. Every
MARKETFEED_* variable must name a key: an unknown one is a problem, with the closest known name.
Secrets can stay out of both: MARKETFEED_<SECTION>__<KEY>_FILE=path reads the value from a file (a
systemd credential, $CREDENTIALS_DIRECTORY/…). A secret exchange option (feeds/<exchange>.py,
schema.secret) comes from the option, else the file its <key>_file option names, else the exchange's
variable, else the file its _FILE variable names (Polygon's api_key: api_key_file, $POLYGON_API_KEY,
$POLYGON_API_KEY_FILE).

A [[feeds]] table is flat: the common keys (FeedConfig) and its exchange's own options side by side;
the exchange's options type (feeds/registry.py) validates the latter, and its protocol's
config_problems() what else that exchange refuses (channels, options).

A config or secret file anyone may write is refused: whoever can edit it can point the service at
their own QuestDB or exchange. Secret values are never echoed in a problem message.

Why not pydantic-settings: its sources merge before validation, so a ValidationError cannot say whether
a value came from the file or a variable; it ignores unknown prefixed variables (extra="forbid" covers
only init and dotenv values); `__` cannot reach into a list ([[feeds]]), by index or by name; it has no
<NAME>_FILE convention (secrets_dir reads files named after fields, with no permission check); and one
strictness for all sources either refuses "7" from the environment or takes "no" as false in the file.
Every source would be ours, and the field checks (bounds, choices, finite numbers) are a few lines here.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import stat
import tomllib
import typing
from collections.abc import Callable, Container, Iterable, Mapping
from pathlib import Path

import orjson

from marketfeed.config.schema import FEED_NAME_CHOICES, Config, FeedConfig, is_secret
from marketfeed.config.secrets import SECRET_KEYS, conf_items
from marketfeed.feeds import registry
from marketfeed.feeds.base import FeedProtocol
from marketfeed.feeds.universe import is_pattern

ENV_PREFIX = "MARKETFEED_"
NOT_A_SETTING = "not a setting (MARKETFEED_<SECTION>__<KEY>, or MARKETFEED_FEEDS__<FEED>__<KEY> for a [[feeds]] table)"
SECTIONS = {name: hint for name, hint in typing.get_type_hints(Config).items() if name not in ("feeds", "source")}
# The keys every [[feeds]] table may hold; the others belong to its exchange's options.
# (decimals: the loader's own copy of questdb.decimals, not a key.)
COMMON_FEED_KEYS = frozenset(f.name for f in dataclasses.fields(FeedConfig)) - {"options", "decimals"}
# Every key a [[feeds]] table of some exchange may hold.
FEED_KEYS = COMMON_FEED_KEYS | {f.name for entry in registry.EXCHANGES.values()
                                for f in dataclasses.fields(entry.options)}
FEED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FeedConfig) if f.default is not dataclasses.MISSING}
# The keys that narrow a universe (feeds/universe.py): set without a pattern in symbols, they would do nothing.
UNIVERSE_KEYS = ("quote_assets", "exclude_symbols", "trading_only", "universe_refresh_s")
MIN_UNIVERSE_REFRESH_S = 60.0  # a listing is a heavy answer (Binance's weighs 20): not read more often than this
# Where a value came from when not from the file: table ("sink", "feeds[1]") → key → environment variable.
Origins = Mapping[str, Mapping[str, str]]


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def load(path: str | os.PathLike | None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        try:
            raw = tomllib.loads(_read_private(Path(path)))
        except FileNotFoundError:
            raise ConfigError([f"{source}: file not found"]) from None
        except PermissionError as exc:
            raise ConfigError([f"{source}: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    origins = _apply_env(raw, env, problems)  # a variable with a problem is left out: the rest is checked too
    _resolve_secret_options(raw, env, source, origins, problems)
    try:
        config = from_dict(raw, source, origins)
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _writable_by_others(path: Path) -> str:
    """Why a file of secrets or trust (config, key file, CA bundle) cannot be trusted: group or others may write it."""
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is group- or world-writable (mode {stat.S_IMODE(mode):o}); refusing it — run chmod go-w on it"
    return ""


def _read_private(path: Path) -> str:
    """A config or secret file's text; PermissionError if anyone but its owner may write it."""
    if why := _writable_by_others(path):
        raise PermissionError(0, why)
    return path.read_text()


def _read_secret(path: str, what: str, problems: list[str], nonempty: bool = False) -> str | None:
    """The text of a secret file, without its trailing newline; a problem naming `what` if unreadable
    (or, when `nonempty`, empty: a key file with no key in it is a mistake, not a choice)."""
    try:
        text = _read_private(Path(path)).rstrip("\r\n")
        if nonempty and not text:
            problems.append(f"{what}: file {path!r} is empty")
            return None
        return text
    except FileNotFoundError:
        problems.append(f"{what}: file {path!r} not found")
    except (PermissionError, IsADirectoryError) as exc:
        problems.append(f"{what}: file {path!r} {exc.strerror}")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{what}: file {path!r} unreadable: {type(exc).__name__}")
    return None


def _resolve_secret_options(raw: dict, env: Mapping[str, str], source: str, origins: Origins,
                            problems: list[str]) -> None:
    """Fill every secret exchange option of every feed: the option, else the file <key>_file names,
    else $<env>, else the file $<env>_FILE names (schema.secret). Kept out of the protocols: one place
    reads secrets, and a missing or unreadable file is a config problem, not a failed connection."""
    feeds = raw.get("feeds")
    for i, feed in enumerate(feeds if isinstance(feeds, list) else []):
        name = feed.get("exchange") if isinstance(feed, dict) else None
        if (entry := registry.EXCHANGES.get(name) if isinstance(name, str) else None) is None:
            continue  # reported by from_dict
        where = f"feeds[{i}] ({feed.get('name', '?')})"
        for option in dataclasses.fields(entry.options):
            if not (var := option.metadata.get("env")):
                continue
            key, key_file = option.name, f"{option.name}_file"
            path, what = feed.get(key_file), _label(source, origins.get(f"feeds[{i}]", {}), where, key_file)
            if path and feed.get(key):
                problems.append(f"{what}: set {key} or {key_file}, not both")
                continue
            if not path and not feed.get(key):
                path, what = env.get(f"{var}_FILE"), f"${var}_FILE (for {where}.{key})"
                if env.get(var):
                    feed[key], path = env[var].strip(), None
            if isinstance(path, str) and path:  # not a string: a type problem from_dict reports
                if (value := _read_secret(path, what, problems, nonempty=True)) is not None:
                    feed[key] = value


def from_dict(raw: dict, source: str = "<dict>", origins: Origins | None = None) -> Config:
    """The config of a dict shaped like the TOML file; origins: which values came from the environment."""
    origins = origins or {}
    problems: list[str] = []
    hints = typing.get_type_hints(Config)
    built: dict = {"source": source}
    for key, value in raw.items():
        if key == "feeds":
            continue
        if key not in SECTIONS:
            problems.append(f"{source}: unknown section [{key}]{_did_you_mean(key, [*SECTIONS, 'feeds'])}")
        elif not isinstance(value, dict):
            problems.append(f"{source}: [{key}] must be a table")
        elif (values := _checked(hints[key], value, key, source, problems, origins.get(key, {}))) is not None:
            built[key] = hints[key](**values)
    feeds = raw.get("feeds", [])
    if not isinstance(feeds, list):
        problems.append(f"{source}: feeds must be an array of tables ([[feeds]])")
        feeds = []
    built_feeds: dict[int, FeedConfig] = {}  # by the index of its [[feeds]] table
    for i, feed in enumerate(feeds):
        if not isinstance(feed, dict):
            problems.append(f"{source}: feeds[{i}] must be a table")
        elif (built_feed := _build_feed(feed, i, source, problems, origins.get(f"feeds[{i}]", {}))) is not None:
            built_feeds[i] = built_feed
    names = [f.name for f in built_feeds.values()]
    for i, feed in built_feeds.items():
        if feed.name not in FEED_NAME_CHOICES:  # names label metrics and logs and name request directories
            at = _label(source, origins.get(f"feeds[{i}]", {}), f"feeds[{i}]", "name")
            problems.append(f"{at}: {feed.name!r} is not one of {', '.join(FEED_NAME_CHOICES)}")
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{source}: feeds: name {dup!r} is used twice")
    _check_tls(built, built_feeds, source, origins, problems)
    _check_decimals(built, source, origins, problems)
    if problems:
        raise ConfigError(problems)
    default_ca = built["service"].ca_file if "service" in built else ""
    decimals = built["questdb"].decimals if "questdb" in built else False  # the feeds parse what the tables store
    return Config(feeds=tuple(dataclasses.replace(f, ca_file=f.ca_file or default_ca, decimals=decimals)
                              for f in built_feeds.values()), **built)


def _check_tls(built: dict, feeds: Mapping[int, FeedConfig], source: str, origins: Origins,
               problems: list[str]) -> None:
    """Certificate verification has no off switch: CA files must exist, the client's unsafe_off is refused."""
    service, questdb = built.get("service"), built.get("questdb")
    cas = [(_label(source, origins.get("service", {}), "service", "ca_file"), service.ca_file if service else "")]
    cas += [(_label(source, origins.get(f"feeds[{i}]", {}), f"feeds ({f.name})", "ca_file"), f.ca_file)
            for i, f in feeds.items()]
    for at, path in cas:
        if path and not os.path.isfile(path):
            problems.append(f"{at}: file {path!r} not found")
        elif path and (why := _writable_by_others(Path(path))):
            problems.append(f"{at}: file {path!r} {why}")
    if questdb is not None:
        at = _label(source, origins.get("questdb", {}), "questdb", "conf")
        settings = dict(conf_items(questdb.conf))
        if settings.get("tls_verify", "on").strip() != "on":
            problems.append(f"{at}: tls_verify={settings['tls_verify']} is refused: certificates "
                            "are always verified (a private CA goes in tls_roots=/path/ca.pem)")
        if (path := settings.get("tls_roots")) and not os.path.isfile(path):
            problems.append(f"{at}: tls_roots file {path!r} not found")


def _check_decimals(built: dict, source: str, origins: Origins, problems: list[str]) -> None:
    """questdb.decimals sends ILP v3 decimals: a client config pinned to an older protocol cannot."""
    questdb = built.get("questdb")
    if questdb is None or not questdb.decimals:
        return
    version = dict(conf_items(questdb.conf)).get("protocol_version", "").strip()
    if version in ("1", "2"):
        problems.append(f"{_label(source, origins.get('questdb', {}), 'questdb', 'conf')}: protocol_version={version} "
                        "cannot carry DECIMAL values (questdb.decimals = true needs 3, the default then)")


def _label(source: str, origins: Mapping[str, str], where: str, key: str) -> str:
    """How a problem names a key: the environment variable it came from, or the file."""
    return f"${origins[key]}: {where}.{key}" if key in origins else f"{source}: {where}.{key}"


def _checked(cls, values: dict, where: str, source: str, problems: list[str], origins: Mapping[str, str]):
    """The keyword arguments of `cls` that `values` give, converted and checked; None after a problem."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    before = len(problems)
    for key, value in values.items():
        at = _label(source, origins, where, key)
        if key not in fields:
            problems.append(f"{at}: unknown key{_did_you_mean(key, fields)}")
            continue
        converted = _convert(hints[key], value)
        if converted is _INVALID:
            secret = f"{where.split('[', 1)[0]}.{key}" in SECRET_KEYS or is_secret(fields[key])
            got = f"a value of type {type(value).__name__} (not shown: it is a secret)" if secret else repr(value)
            problems.append(f"{at}: expected {_type_name(hints[key])}, got {got}")
            continue
        meta = fields[key].metadata
        if not _finite(converted):  # NaN passes every bound (all comparisons are false); inf passes a min
            problems.append(f"{at}: {converted!r} is not a finite number")
        elif meta.get("min") is not None and converted < meta["min"]:
            problems.append(f"{at}: {converted!r} is below the minimum {meta['min']}")
        elif meta.get("max") is not None and converted > meta["max"]:
            problems.append(f"{at}: {converted!r} is above the maximum {meta['max']}")
        elif meta.get("choices") and converted not in meta["choices"]:
            problems.append(f"{at}: {converted!r} is not one of {', '.join(meta['choices'])}")
        kwargs[key] = converted
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in values:
            problems.append(f"{source}: {where}.{name}: required key is missing")
    return None if len(problems) > before else kwargs


def _build_feed(values: dict, i: int, source: str, problems: list[str],
                origins: Mapping[str, str]) -> FeedConfig | None:
    """One [[feeds]] table: the common keys → FeedConfig, the others → its exchange's options."""
    where = f"feeds[{i}]" if "name" not in values else f"feeds[{i}] ({values['name']})"
    name = values.get("exchange")
    entry: registry.Exchange | None = None
    own: list[str] = []
    if isinstance(name, str):
        try:
            entry = registry.exchange(name)
        except registry.UnknownExchange as exc:
            # Named as the checks of a whole feed name it (_check_feed): "feeds (name).exchange".
            named = f"feeds ({values['name']})" if "name" in values else f"feeds[{i}]"
            problems.append(f"{_label(source, origins, named, 'exchange')}: {exc}")
        else:  # only a known exchange says which keys are its own
            own = [f.name for f in dataclasses.fields(entry.options)]
            problems += [f"{_label(source, origins, where, key)}: {_not_a_key(key, name, own)}"
                         for key in values if key not in COMMON_FEED_KEYS and key not in own]
    common = _checked(FeedConfig, {k: v for k, v in values.items() if k in COMMON_FEED_KEYS}, where, source,
                      problems, origins)
    options = _checked(entry.options, {k: v for k, v in values.items() if k in own}, where, source, problems,
                       origins) if entry else None
    if common is None:
        return None
    named = f"feeds ({common['name']})"
    _check_feed({**FEED_DEFAULTS, **common}, lambda key: _label(source, origins, named, key), origins, problems)
    if entry is None or options is None:  # no known exchange, or its options have problems
        return None
    feed = FeedConfig(**common, options=entry.options(**options))
    at = functools.partial(_label, source, origins, named)
    try:
        protocol = entry.protocol(feed)  # the exchange module checks its own settings (channels, intervals)
    except ValueError as exc:
        problems.append(f"{at('channels')}: {exc}")
    else:
        _check_universe(feed, protocol, values, at, problems)
    for problem in entry.protocol.config_problems(feed):  # "<key>: <why>", the key named where it came from
        key, sep, why = problem.partition(": ")
        keyed = sep and (key in COMMON_FEED_KEYS or key in own)
        problems.append(f"{_label(source, origins, named, key)}: {why}" if keyed else f"{source}: {named}: {problem}")
    return feed


def _check_universe(feed: FeedConfig, protocol: FeedProtocol, given: Container[str], at: Callable[[str], str],
                    problems: list[str]) -> None:
    """A pattern in symbols needs the exchange's listing (or is the exchange's own wildcard); the keys that narrow
    a universe need a pattern (`given`: the keys the table or the environment set); max_streams_per_connection
    may only lower the exchange's documented limit."""
    patterns = [symbol for symbol in feed.symbols if is_pattern(symbol)]
    narrowing = [key for key in UNIVERSE_KEYS if key in given]
    if not patterns:
        problems += [f"{at(key)}: narrows a universe, which only a pattern in symbols selects (e.g. symbols = "
                     f'["*"] or ["*USDT"])' for key in narrowing]
    elif protocol.any_symbol():
        problems += [f"{at(key)}: {protocol.wildcard_symbol!r} is {feed.exchange}'s own wildcard (every symbol), with "
                     "no listing to narrow" for key in narrowing]
    elif protocol.listing_request() is None:
        alone = f"; {protocol.wildcard_symbol!r} alone subscribes to every symbol" if protocol.wildcard_symbol else ""
        problems.append(f"{at('symbols')}: {', '.join(map(repr, patterns))}: {feed.exchange} publishes no listing to "
                        f"match patterns against{alone}")
    elif not feed.rest_url:
        problems.append(f"{at('rest_url')}: required with a pattern in symbols: {feed.exchange}'s listing is read "
                        "from its REST API")
    if 0 < feed.universe_refresh_s < MIN_UNIVERSE_REFRESH_S:
        problems.append(f"{at('universe_refresh_s')}: {feed.universe_refresh_s!r} is below the minimum "
                        f"{MIN_UNIVERSE_REFRESH_S:g} (0: never read again)")
    limit, wanted = protocol.connection_limits.max_streams, feed.max_streams_per_connection
    if limit and wanted > limit:
        problems.append(f"{at('max_streams_per_connection')}: {wanted} is above {feed.exchange}'s documented limit "
                        f"of {limit} streams per connection (0: that limit; a value may only lower it)")
    if wanted and wanted < protocol.streams_per_symbol():
        problems.append(f"{at('max_streams_per_connection')}: {wanted} is below the {protocol.streams_per_symbol()} "
                        "streams one symbol takes (one per channel)")


def _not_a_key(key: str, exchange: str, own: list[str]) -> str:
    """Why a key is refused in a feed of `exchange`, and which keys of its own that exchange takes."""
    owners = [other for other, entry in registry.EXCHANGES.items()
              if key in {f.name for f in dataclasses.fields(entry.options)}]
    what = (f"a key of {' and '.join(owners)} feeds, not of {exchange}" if owners
            else f"unknown key{_did_you_mean(key, [*sorted(COMMON_FEED_KEYS), *own])}")
    takes = f"the common keys and {', '.join(own)}" if own else "the common keys only"
    return f"{what} (a {exchange} feed takes {takes})"


_INVALID = object()


def _convert(hint, value):
    if hint is bool:
        return value if isinstance(value, bool) else _INVALID
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _INVALID
    if hint is str:
        return value if isinstance(value, str) else _INVALID
    if typing.get_origin(hint) is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            return _INVALID
        items = [_convert(item, v) for v in value]
        return _INVALID if any(i is _INVALID for i in items) else tuple(items)
    return _INVALID


def _finite(value) -> bool:
    """False for a NaN or infinite float, alone or in a list (TOML and the environment both spell them nan, inf)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return all(map(_finite, value)) if isinstance(value, tuple) else True


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[hint]


def _check_feed(feed: dict, at: Callable[[str], str], from_env: Container[str], problems: list[str]) -> None:
    """Checks across the common keys of one feed, given as checked keyword arguments of FeedConfig with
    its defaults: they hold for a feed of an unknown exchange too, which has no FeedConfig. `at` names a key
    as a problem does: the file or the variable it came from (the keys `from_env` holds)."""
    if not feed["symbols"]:
        problems.append(f"{at('symbols')}: at least one symbol is needed")
    for key in ("url", *(() if not feed["rest_url"] else ("rest_url",))):
        url = feed[key]
        if url.split("://", 1)[0] not in ("ws", "wss", "http", "https"):
            problems.append(f"{at(key)}: {url!r} is not a ws://, wss://, http:// or https:// URL")
    if feed["reconnect_max_s"] < feed["reconnect_min_s"]:  # named by the variable that set one, if one did
        key = "reconnect_min_s" if "reconnect_min_s" in from_env and "reconnect_max_s" not in from_env \
            else "reconnect_max_s"
        problems.append(f"{at(key)}: reconnect_max_s {feed['reconnect_max_s']} is below "
                        f"reconnect_min_s {feed['reconnect_min_s']}")


def feed_env_name(name: str) -> str:
    """How a MARKETFEED_FEEDS__<FEED>__<KEY> variable names a feed: every character but letters and digits as "_"."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _apply_env(raw: dict, env: Mapping[str, str], problems: list[str]) -> dict[str, dict[str, str]]:
    """MARKETFEED_* overrides into `raw`; returns which key of which table each variable set."""
    origins: dict[str, dict[str, str]] = {}
    feeds = raw.get("feeds")
    tables = feeds if isinstance(feeds, list) else []
    known = _env_names(raw)  # as the file has them: a variable may rename a feed
    # Feeds as variables name them, taken before any variable renames one.
    by_name: dict[str, list[int]] = {}
    for i, table in enumerate(tables):
        if isinstance(table, dict) and isinstance(table.get("name"), str):
            by_name.setdefault(feed_env_name(table["name"]), []).append(i)
    for name, value in sorted(env.items()):  # sorted: KEY before KEY_FILE, so the file wins
        if not name.upper().startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section == "feeds":
            selector, _, key = key.rpartition("__")
            if not selector:
                problems.append(f"${name}: {NOT_A_SETTING}{_did_you_mean(name, known)}")
                continue
            if not selector.isdigit():
                index = _feed_by_name(name, selector, by_name, tables, problems)
                if index is None:
                    continue
            elif int(selector) >= len(tables) or not isinstance(tables[int(selector)], dict):
                problems.append(f"${name}: the config has no feeds[{selector}] "
                                f"(its {len(tables)} [[feeds]] tables count from 0)")
                continue
            else:
                index = int(selector)
            if key not in FEED_KEYS:  # a key of another exchange's feeds is named so by _build_feed
                problems.append(f"${name}: no feed takes the key {key!r}{_did_you_mean(name, known)}")
                continue
            table, path = tables[index], f"feeds[{index}]"
        elif section in SECTIONS:
            table, path = raw.setdefault(section, {}), section
            keys = {f.name for f in dataclasses.fields(SECTIONS[section])}
            if key.endswith("_file") and key not in keys and key[:-len("_file")] in keys:
                if (text := _read_secret(value, f"${name}", problems)) is not None:
                    table[key[:-len("_file")]] = text  # taken as is: a secret is a string
                    origins.setdefault(path, {})[key[:-len("_file")]] = name
                continue
            if key not in keys:
                problems.append(f"${name}: [{section}] has no key {key!r}{_did_you_mean(name, known)}")
                continue
        else:
            what = f"the config has no section [{section}]" if key else NOT_A_SETTING
            problems.append(f"${name}: {what}{_did_you_mean(name, known)}")
            continue
        try:
            table[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            table[key] = value
        origins.setdefault(path, {})[key] = name
    return origins


def _feed_by_name(variable: str, selector: str, by_name: Mapping[str, list[int]], tables: list,
                  problems: list[str]) -> int | None:
    """The index of the [[feeds]] table a variable names by its feed's name; None after a problem."""
    found = by_name.get(selector.upper(), [])
    if len(found) == 1:
        return found[0]
    if found:
        names = " and ".join(repr(tables[i]["name"]) for i in found)
        problems.append(f"${variable}: feeds {names} are both {selector.upper()} in a variable name: "
                        f"name one by its index, MARKETFEED_FEEDS__<n>__<KEY> (n from 0)")
    else:
        known = ", ".join(by_name) or "none"
        guess = difflib.get_close_matches(selector.upper(), list(by_name), n=1)
        problems.append(f"${variable}: the config has no feed named {selector.upper()} in a variable name "
                        f"(its feeds so named: {known}){f'; did you mean {guess[0]}?' if guess else ''}")
    return None


def _env_names(raw: dict) -> list[str]:
    """Every MARKETFEED_* name a variable may have with this config (by feed name and by index)."""
    names = [f"{ENV_PREFIX}{section.upper()}__{f.name.upper()}"
             for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    names += [f"{ENV_PREFIX}{key.replace('.', '__').upper()}_FILE" for key in sorted(SECRET_KEYS)]
    feeds = raw.get("feeds")
    for i, table in enumerate(feeds if isinstance(feeds, list) else []):
        if not isinstance(table, dict):
            continue
        exchange = table.get("exchange")
        entry = registry.EXCHANGES.get(exchange) if isinstance(exchange, str) else None
        keys = sorted(COMMON_FEED_KEYS) + ([f.name for f in dataclasses.fields(entry.options)] if entry else [])
        selectors = [str(i)] + ([feed_env_name(table["name"])] if isinstance(table.get("name"), str) else [])
        names += [f"{ENV_PREFIX}FEEDS__{selector}__{key.upper()}" for selector in selectors for key in keys]
    return names


def _did_you_mean(given: str, known: Iterable[str]) -> str:
    """'; did you mean X?' with the closest of `known` to a misspelt key or variable, or nothing when none is close
    (variables are compared without their common MARKETFEED_, which would make any two look alike)."""
    cut = len(ENV_PREFIX) if given.upper().startswith(ENV_PREFIX) else 0
    candidates = {k[cut:].lower(): k for k in known}
    guess = difflib.get_close_matches(given[cut:].lower(), list(candidates), n=1, cutoff=0.75)
    return f"; did you mean {candidates[guess[0]]}?" if guess else ""


def to_toml(raw: dict) -> str:
    """Write a config dict (sections of scalars and lists, plus [[feeds]]) back as TOML."""
    lines = []
    for section, values in raw.items():
        if section != "feeds":
            lines += [f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
    for feed in raw.get("feeds", []):
        lines += ["[[feeds]]", *(f"{k} = {_toml_value(v)}" for k, v in feed.items())]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
