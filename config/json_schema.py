"""The config's JSON Schema (draft-07), for editors: generated from config/schema.py and every exchange's options
(feeds/registry.py), shipped as config/marketfeed.schema.json, which tests/test_config_schema.py keeps equal to it.

It says what the loader checks key by key: unknown keys, types, bounds, choices, required keys, and which keys each
exchange's [[feeds]] tables take. Checks across keys (reconnect_max_s ≥ reconnect_min_s, CA files, an exchange's own
channel rules, no NaN) remain the loader's alone: `marketfeed check-config` is the authority.

Regenerate after a change of the schema: python -m marketfeed.config.json_schema > config/marketfeed.schema.json
"""
from __future__ import annotations

import dataclasses
import json
import typing

from marketfeed.config.schema import FEED_NAME_CHOICES, Config, FeedConfig, PatternChoices
from marketfeed.feeds import registry

_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _property(hint, option: dataclasses.Field) -> dict:
    if typing.get_origin(hint) is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        prop: dict = {"type": "array", "items": {"type": _TYPES[item]}}
    else:
        prop = {"type": _TYPES[hint]}
    meta = option.metadata
    if meta.get("min") is not None:
        prop["minimum"] = meta["min"]
    if meta.get("max") is not None:
        prop["maximum"] = meta["max"]
    if isinstance(choices := meta.get("choices"), PatternChoices):
        prop["pattern"] = _anchored(choices)
    elif choices:
        prop["enum"] = list(choices)
    if option.default is not dataclasses.MISSING:
        prop["default"] = list(option.default) if isinstance(option.default, tuple) else option.default
    return prop


def _anchored(choices: PatternChoices) -> str:
    """A pattern the whole value must match: JSON Schema's patterns match anywhere in it."""
    return f"^(?:{choices.pattern.pattern})$"


def _properties(cls: type, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    hints = typing.get_type_hints(cls)
    return {f.name: _property(hints[f.name], f) for f in dataclasses.fields(cls) if f.name not in skip}


def _feed() -> dict:
    """A [[feeds]] table: the common keys and every exchange's options side by side, each exchange taking its own."""
    common = _properties(FeedConfig, skip=("options", "decimals"))  # decimals: set by the loader, not a key
    common["name"]["pattern"] = _anchored(FEED_NAME_CHOICES)
    common["exchange"]["enum"] = list(registry.EXCHANGES)
    common["symbols"]["minItems"] = 1
    for key in ("url", "rest_url"):
        common[key]["pattern"] = "^(?:wss?|https?)://" if key == "url" else "^(?:(?:wss?|https?)://|$)"
    options: dict[str, dict] = {}
    takes = []
    for name, entry in registry.EXCHANGES.items():
        own = _properties(entry.options)
        for key, prop in own.items():
            if options.setdefault(key, prop) != prop:  # one key, one meaning: else the schema cannot say both
                raise ValueError(f"exchange option {key!r} differs between exchanges")
        takes.append({"if": {"properties": {"exchange": {"const": name}}, "required": ["exchange"]},
                      "then": {"propertyNames": {"enum": [*common, *own]}}})
    required = [f.name for f in dataclasses.fields(FeedConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return {"type": "object", "required": required, "properties": {**common, **options},
            "additionalProperties": False, "allOf": takes}


def config_schema() -> dict:
    hints = typing.get_type_hints(Config)
    sections = {name: {"type": "object", "properties": _properties(hint), "additionalProperties": False}
                for name, hint in hints.items() if name not in ("feeds", "source")}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "marketfeed configuration (marketfeed.toml)",
        "description": "Generated from the config schema; `marketfeed check-config` checks the rest.",
        "type": "object",
        "properties": {**sections, "feeds": {"type": "array", "items": _feed()}},
        "additionalProperties": False,
    }


def render() -> str:
    """The shipped file's text."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
