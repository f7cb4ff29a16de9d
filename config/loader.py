"""Load and validate the TOML config; every problem is reported at once, naming file and key.

Environment overrides: MARKETFEED_<SECTION>__<KEY>=value, e.g. MARKETFEED_QUESTDB__CONF=...
(values are parsed as TOML scalars when they parse, else taken as strings). Secrets can stay out of
both: MARKETFEED_<SECTION>__<KEY>_FILE=path reads the value from a file (a systemd credential,
$CREDENTIALS_DIRECTORY/…), and a feed's api_key_file does the same for its api_key.

A config or secret file anyone may write is refused: whoever can edit it can point the service at
their own QuestDB or exchange. Secret values are never echoed in a problem message.
"""
from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path

import orjson

from marketfeed.config.schema import Config, FeedConfig
from marketfeed.config.secrets import SECRET_KEYS, conf_items

ENV_PREFIX = "MARKETFEED_"
SECTIONS = {name: hint for name, hint in typing.get_type_hints(Config).items() if name not in ("feeds", "source")}


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
    _apply_env(raw, env, problems)
    _read_key_files(raw, source, problems)
    if problems:
        raise ConfigError(problems)
    return from_dict(raw, source)


def _read_private(path: Path) -> str:
    """A config or secret file's text; PermissionError if anyone may write it."""
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH:
        raise PermissionError(0, f"is world-writable (mode {stat.S_IMODE(mode):o}); refusing it — "
                                 "run chmod o-w on it")
    return path.read_text()


def _read_secret(path: str, what: str, problems: list[str]) -> str | None:
    """The text of a secret file, without its trailing newline; a problem naming `what` if unreadable."""
    try:
        return _read_private(Path(path)).rstrip("\r\n")
    except FileNotFoundError:
        problems.append(f"{what}: file {path!r} not found")
    except (PermissionError, IsADirectoryError) as exc:
        problems.append(f"{what}: file {path!r} {exc.strerror}")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{what}: file {path!r} unreadable: {type(exc).__name__}")
    return None


def _read_key_files(raw: dict, source: str, problems: list[str]) -> None:
    """feeds[i].api_key_file → feeds[i].api_key."""
    feeds = raw.get("feeds")
    for i, feed in enumerate(feeds if isinstance(feeds, list) else []):
        if not isinstance(feed, dict) or not feed.get("api_key_file"):
            continue
        where = f"{source}: feeds[{i}] ({feed.get('name', '?')}).api_key_file"
        if not isinstance(feed["api_key_file"], str):
            continue  # reported by from_dict as a type problem
        if feed.get("api_key"):
            problems.append(f"{where}: set api_key or api_key_file, not both")
        elif (key := _read_secret(feed["api_key_file"], where, problems)) is not None:
            feed["api_key"] = key


def from_dict(raw: dict, source: str = "<dict>") -> Config:
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
        else:
            built[key] = _build(hints[key], value, f"{key}", source, problems)
    feeds = raw.get("feeds", [])
    if not isinstance(feeds, list):
        problems.append(f"{source}: feeds must be an array of tables ([[feeds]])")
        feeds = []
    built_feeds = []
    for i, feed in enumerate(feeds):
        if not isinstance(feed, dict):
            problems.append(f"{source}: feeds[{i}] must be a table")
            continue
        where = f"feeds[{i}]" if "name" not in feed else f"feeds[{i}] ({feed['name']})"
        built_feed = _build(FeedConfig, feed, where, source, problems)
        if built_feed is not None:
            built_feeds.append(built_feed)
    names = [f.name for f in built_feeds]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{source}: feeds: name {dup!r} is used twice")
    for feed in built_feeds:
        _check_feed(feed, source, problems)
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
    if questdb is not None:
        settings = dict(conf_items(questdb.conf))
        if settings.get("tls_verify", "on").strip() != "on":
            problems.append(f"{source}: questdb.conf: tls_verify={settings['tls_verify']} is refused: certificates "
                            "are always verified (a private CA goes in tls_roots=/path/ca.pem)")
        if (path := settings.get("tls_roots")) and not os.path.isfile(path):
            problems.append(f"{source}: questdb.conf: tls_roots file {path!r} not found")


def _build(cls, values: dict, where: str, source: str, problems: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    before = len(problems)
    for key, value in values.items():
        if key not in fields:
            problems.append(f"{source}: {where}.{key}: unknown key")
            continue
        converted = _convert(hints[key], value)
        if converted is _INVALID:
            secret = f"{where.split('[', 1)[0]}.{key}" in SECRET_KEYS
            got = f"a value of type {type(value).__name__} (not shown: it is a secret)" if secret else repr(value)
            problems.append(f"{source}: {where}.{key}: expected {_type_name(hints[key])}, got {got}")
            continue
        meta = fields[key].metadata
        if meta.get("min") is not None and converted < meta["min"]:
            problems.append(f"{source}: {where}.{key}: {converted!r} is below the minimum {meta['min']}")
        elif meta.get("max") is not None and converted > meta["max"]:
            problems.append(f"{source}: {where}.{key}: {converted!r} is above the maximum {meta['max']}")
        elif meta.get("choices") and converted not in meta["choices"]:
            problems.append(f"{source}: {where}.{key}: {converted!r} is not one of {', '.join(meta['choices'])}")
        kwargs[key] = converted
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in values:
            problems.append(f"{source}: {where}.{name}: required key is missing")
    if len(problems) > before:
        return None
    return cls(**kwargs)


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


def _type_name(hint) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[hint]


def _check_feed(feed: FeedConfig, source: str, problems: list[str]) -> None:
    from marketfeed.feeds.base import protocol_class

    where = f"{source}: feeds ({feed.name})"
    try:
        protocol = protocol_class(feed.exchange)
    except ValueError:
        problems.append(f"{where}.exchange: unknown exchange {feed.exchange!r}")
    else:
        try:
            protocol(feed)  # the exchange module checks its own settings (channels, intervals)
        except ValueError as exc:
            problems.append(f"{where}.channels: {exc}")
    if not feed.symbols:
        problems.append(f"{where}.symbols: at least one symbol is needed")
    for key in ("url", *(() if not feed.rest_url else ("rest_url",))):
        url = getattr(feed, key)
        if not url.split("://", 1)[0] in ("ws", "wss", "http", "https"):
            problems.append(f"{where}.{key}: {url!r} is not a ws://, wss://, http:// or https:// URL")
    if feed.reconnect_max_s < feed.reconnect_min_s:
        problems.append(f"{where}.reconnect_max_s: below reconnect_min_s")


def _apply_env(raw: dict, env: Mapping[str, str], problems: list[str]) -> None:
    for name, value in sorted(env.items()):  # sorted: KEY before KEY_FILE, so the file wins
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section not in SECTIONS:
            continue
        if key.endswith("_file") and key not in typing.get_type_hints(SECTIONS[section]):
            if (text := _read_secret(value, f"${name}", problems)) is not None:
                raw.setdefault(section, {})[key[:-len("_file")]] = text  # taken as is: a secret is a string
            continue
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        raw.setdefault(section, {})[key] = parsed


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
