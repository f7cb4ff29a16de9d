"""Which config values are secrets, and how to show a config string without them.

Secrets: feed API keys (secret exchange options), and the credentials inside the QuestDB client string
(username, password, token, token_x, token_y) and the PostgreSQL DSN (password). They may come from the
config file, MARKETFEED_* variables, an exchange's own variables ($POLYGON_API_KEY) or the files *_FILE
variables and *_file keys name; the loader resolves all of them into the config, and from there they are
registered with the log formatter (telemetry.logs.hide) so no log line, report or message shows them.
"""
from __future__ import annotations

import dataclasses
import re

from marketfeed.config.schema import Config, ExchangeOptions, is_secret

REDACTED = "***"
# Keys whose whole value is secret, as "section.key" ("feeds.key" for every feed, an exchange option included).
# Exchange options declare their own secrets (config.schema.secret()); these are the service's.
SECRET_KEYS = frozenset(("questdb.conf", "questdb.pg_dsn"))
CONF_SECRET_KEYS = frozenset(("username", "password", "token", "token_x", "token_y"))
_DSN_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)""")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)")


def conf_items(conf: str) -> list[tuple[str, str]]:
    """The key=value pairs of a questdb client string 'http::addr=h:9000;password=a;;b;' (';;' is a literal ';')."""
    _, _, params = conf.partition("::")
    items, key, value, in_value, i = [], "", "", False, 0
    while i < len(params):
        c = params[i]
        if not in_value and c == "=":
            in_value = True
        elif c == ";" and in_value and params[i + 1:i + 2] == ";":
            value += ";"
            i += 1
        elif c == ";":
            items.append((key.strip(), value))
            key, value, in_value = "", "", False
        elif in_value:
            value += c
        else:
            key += c
        i += 1
    if key.strip():
        items.append((key.strip(), value))
    return items


def redact_conf(conf: str) -> str:
    """The questdb client string with its credentials replaced by ***."""
    scheme, sep, _ = conf.partition("::")
    if not sep:
        return conf
    shown = [f"{k}={REDACTED if k in CONF_SECRET_KEYS else v.replace(';', ';;')}" for k, v in conf_items(conf)]
    return f"{scheme}::" + "".join(f"{item};" for item in shown)


def redact_dsn(dsn: str) -> str:
    """A libpq DSN (key=value or URL form) with its password replaced by ***."""
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<3>", _DSN_PASSWORD.sub(rf"\g<1>{REDACTED}", dsn))


def dsn_password(dsn: str) -> str:
    match = _DSN_PASSWORD.search(dsn) or _URL_PASSWORD.search(dsn)
    if match is None:
        return ""
    value = match.group(2)
    return value[1:-1] if value.startswith("'") else value


def secret_values(config: Config) -> set[str]:
    """Every secret string a config holds, for the log formatter to hide. Values shorter than 6 are
    skipped: hiding QuestDB's public default password 'quest' would mangle every 'questdb' in the log,
    and so short a secret protects nothing anyway."""
    values = {v for k, v in conf_items(config.questdb.conf) if k in CONF_SECRET_KEYS - {"username"}}
    values.add(dsn_password(config.questdb.pg_dsn))
    for feed in config.feeds:
        options = feed.options_of(ExchangeOptions)
        values.update(getattr(options, option.name) for option in dataclasses.fields(options)
                      if is_secret(option))
    return {v for v in values if len(v) >= 6}
