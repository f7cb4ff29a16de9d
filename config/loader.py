"""Load and validate the TOML config; every problem is reported at once, naming file and key
(or the environment variable the value came from).

Environment overrides: MARKETFEED_<SECTION>__<KEY>=value, e.g. MARKETFEED_QUESTDB__CONF=..., and
MARKETFEED_FEEDS__<n>__<KEY> for the n-th [[feeds]] table (from 0, as problems count them); values are
parsed as TOML scalars when they parse, else taken as strings. Secrets can stay out of both:
MARKETFEED_<SECTION>__<KEY>_FILE=path reads the value from a file (a systemd credential,
$CREDENTIALS_DIRECTORY/…). A secret exchange option (feeds/<exchange>.py, schema.secret) comes from
the option, else the file its <key>_file option names, else the exchange's variable, else the file
its _FILE variable names (Polygon's api_key: api_key_file, $POLYGON_API_KEY, $POLYGON_API_KEY_FILE).

A [[feeds]] table is flat: the common keys (FeedConfig) and its exchange's own options side by side;
the exchange's options type (feeds/registry.py) validates the latter.

A config or secret file anyone may write is refused: whoever can edit it can point the service at
their own QuestDB or exchange. Secret values are never echoed in a problem message.
"""
from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path

import orjson

from marketfeed.config.schema import FEED_NAME_CHOICES, Config, FeedConfig, is_secret
from marketfeed.config.secrets import SECRET_KEYS, conf_items
from marketfeed.feeds import registry

ENV_PREFIX = "MARKETFEED_"
SECTIONS = {name: hint for name, hint in typing.get_type_hints(Config).items() if name not in ("feeds", "source")}
# The keys every [[feeds]] table may hold; the others belong to its exchange's options.
COMMON_FEED_KEYS = frozenset(f.name for f in dataclasses.fields(FeedConfig)) - {"options"}
FEED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FeedConfig) if f.default is not dataclasses.MISSING}
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
    origins = _apply_env(raw, env, problems)
    _resolve_secret_options(raw, env, source, origins, problems)
    if problems:
        raise ConfigError(problems)
    return from_dict(raw, source, origins)


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
            problems.append(f"{source}: unknown section [{key}]")
        elif not isinstance(value, dict):
            problems.append(f"{source}: [{key}] must be a table")
        elif (values := _checked(hints[key], value, key, source, problems, origins.get(key, {}))) is not None:
            built[key] = hints[key](**values)
    feeds = raw.get("feeds", [])
    if not isinstance(feeds, list):
        problems.append(f"{source}: feeds must be an array of tables ([[feeds]])")
        feeds = []
    built_feeds = []
    for i, feed in enumerate(feeds):
        if not isinstance(feed, dict):
            problems.append(f"{source}: feeds[{i}] must be a table")
        elif (built_feed := _build_feed(feed, i, source, problems, origins.get(f"feeds[{i}]", {}))) is not None:
            built_feeds.append(built_feed)
    names = [f.name for f in built_feeds]
    for i, name in enumerate(names):
        if name not in FEED_NAME_CHOICES:  # names label metrics and logs and name request directories
            problems.append(f"{source}: feeds[{i}].name: {name!r} is not one of {', '.join(FEED_NAME_CHOICES)}")
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{source}: feeds: name {dup!r} is used twice")
    _check_tls(built, built_feeds, source, problems)
    if problems:
        raise ConfigError(problems)
    default_ca = built["service"].ca_file if "service" in built else ""
    built_feeds = [dataclasses.replace(f, ca_file=f.ca_file or default_ca) for f in built_feeds]
    return Config(feeds=tuple(built_feeds), **built)


def _check_tls(built: dict, feeds: list[FeedConfig], source: str, problems: list[str]) -> None:
    """Certificate verification has no off switch: CA files must exist, the client's unsafe_off is refused."""
    service, questdb = built.get("service"), built.get("questdb")
    cas = [("service.ca_file", service.ca_file if service else "")]
    cas += [(f"feeds ({f.name}).ca_file", f.ca_file) for f in feeds]
    for key, path in cas:
        if path and not os.path.isfile(path):
            problems.append(f"{source}: {key}: file {path!r} not found")
        elif path and (why := _writable_by_others(Path(path))):
            problems.append(f"{source}: {key}: file {path!r} {why}")
    if questdb is not None:
        settings = dict(conf_items(questdb.conf))
        if settings.get("tls_verify", "on").strip() != "on":
            problems.append(f"{source}: questdb.conf: tls_verify={settings['tls_verify']} is refused: certificates "
                            "are always verified (a private CA goes in tls_roots=/path/ca.pem)")
        if (path := settings.get("tls_roots")) and not os.path.isfile(path):
            problems.append(f"{source}: questdb.conf: tls_roots file {path!r} not found")


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
            problems.append(f"{at}: unknown key")
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
    _check_feed({**FEED_DEFAULTS, **common}, source, problems)
    if entry is None or options is None:  # no known exchange, or its options have problems
        return None
    feed = FeedConfig(**common, options=entry.options(**options))
    try:
        entry.protocol(feed)  # the exchange module checks its own settings (channels, intervals)
    except ValueError as exc:
        problems.append(f"{source}: feeds ({feed.name}).channels: {exc}")
    return feed


def _not_a_key(key: str, exchange: str, own: list[str]) -> str:
    """Why a key is refused in a feed of `exchange`, and which keys of its own that exchange takes."""
    owners = [other for other, entry in registry.EXCHANGES.items()
              if key in {f.name for f in dataclasses.fields(entry.options)}]
    what = f"a key of {' and '.join(owners)} feeds, not of {exchange}" if owners else "unknown key"
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


def _check_feed(feed: dict, source: str, problems: list[str]) -> None:
    """Checks across the common keys of one feed, given as checked keyword arguments of FeedConfig with
    its defaults: they hold for a feed of an unknown exchange too, which has no FeedConfig."""
    where = f"{source}: feeds ({feed['name']})"
    if not feed["symbols"]:
        problems.append(f"{where}.symbols: at least one symbol is needed")
    for key in ("url", *(() if not feed["rest_url"] else ("rest_url",))):
        url = feed[key]
        if url.split("://", 1)[0] not in ("ws", "wss", "http", "https"):
            problems.append(f"{where}.{key}: {url!r} is not a ws://, wss://, http:// or https:// URL")
    if feed["reconnect_max_s"] < feed["reconnect_min_s"]:
        problems.append(f"{where}.reconnect_max_s: below reconnect_min_s")


def _apply_env(raw: dict, env: Mapping[str, str], problems: list[str]) -> dict[str, dict[str, str]]:
    """MARKETFEED_* overrides into `raw`; returns which key of which table each variable set."""
    origins: dict[str, dict[str, str]] = {}
    for name, value in sorted(env.items()):  # sorted: KEY before KEY_FILE, so the file wins
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section == "feeds":
            index, _, key = key.partition("__")
            feeds = raw.get("feeds")
            tables = feeds if isinstance(feeds, list) else []
            if not index.isdigit() or int(index) >= len(tables) or not isinstance(tables[int(index)], dict):
                problems.append(f"${name}: the config has no feeds[{index}] "
                                f"(its {len(tables)} [[feeds]] tables count from 0)")
                continue
            table, path = tables[int(index)], f"feeds[{int(index)}]"
        elif section in SECTIONS:
            table, path = raw.setdefault(section, {}), section
            if key.endswith("_file") and key not in typing.get_type_hints(SECTIONS[section]):
                if (text := _read_secret(value, f"${name}", problems)) is not None:
                    table[key[:-len("_file")]] = text  # taken as is: a secret is a string
                    origins.setdefault(path, {})[key[:-len("_file")]] = name
                continue
        else:
            continue
        try:
            table[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            table[key] = value
        origins.setdefault(path, {})[key] = name
    return origins


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
