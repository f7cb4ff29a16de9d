"""The config's JSON Schema shipped for editors: what the code generates, valid for the example config, and refusing
key by key what the loader refuses."""
import json
import tomllib

import jsonschema
import pytest

from marketfeed.config.json_schema import render
from marketfeed.config.loader import ConfigError, from_dict
from marketfeed.config.shipped import shipped_file

FEED = {"name": "binance-spot", "exchange": "binance", "url": "wss://stream.binance.com:9443", "symbols": ["BTCUSDT"]}
POLYGON = {"name": "stocks", "exchange": "polygon", "url": "wss://socket.polygon.io/stocks", "symbols": ["AAPL"],
           "api_key_file": "/run/credentials/marketfeed/polygon", "min_trade_value": 1000}


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(shipped_file("config-schema").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_shipped_schema_is_the_one_the_code_generates():
    assert shipped_file("config-schema").read_text() == render(), (
        "regenerate: python -m marketfeed.config.json_schema > config/marketfeed.schema.json")


def test_the_example_config_and_one_feed_of_each_exchange_validate():
    example = tomllib.loads(shipped_file("example-config").read_text())
    assert list(validator().iter_errors(example)) == []
    feeds = [FEED, {**FEED, "name": "kraken", "exchange": "kraken", "snapshot": False},
             {**FEED, "name": "coinbase", "exchange": "coinbase"}, POLYGON]
    raw = {"sink": {"max_rows": 500, "flush_interval_s": 1}, "questdb": {"table_prefix": "t_"}, "feeds": feeds}
    from_dict(raw)  # the loader takes it too
    assert list(validator().iter_errors(raw)) == []


@pytest.mark.parametrize("raw, path", [
    ({"sinks": {}}, []),  # an unknown section
    ({"sink": {"max_rowz": 5}}, ["sink"]),
    ({"sink": {"max_rows": 0}}, ["sink", "max_rows"]),
    ({"sink": {"flush_interval_s": "soon"}}, ["sink", "flush_interval_s"]),
    ({"spool": {"fsync": "always"}}, ["spool", "fsync"]),
    ({"questdb": {"table_prefix": "x; DROP"}}, ["questdb", "table_prefix"]),
    ({"feeds": [{**FEED, "snapshot": False}]}, ["feeds", 0]),  # Kraken's key in a Binance feed
    ({"feeds": [{**FEED, "exchange": "nowhere"}]}, ["feeds", 0, "exchange"]),
    ({"feeds": [{**FEED, "name": "../x"}]}, ["feeds", 0, "name"]),
    ({"feeds": [{**FEED, "symbols": []}]}, ["feeds", 0, "symbols"]),
    ({"feeds": [{**FEED, "url": "ftp://x"}]}, ["feeds", 0, "url"]),
    ({"feeds": [{"name": "x", "exchange": "binance", "symbols": ["A"]}]}, ["feeds", 0]),  # no url
    ({"feeds": [{**POLYGON, "min_trade_value": -1}]}, ["feeds", 0, "min_trade_value"]),
])
def test_what_the_loader_refuses_key_by_key_the_schema_refuses_at_that_key(raw, path):
    with pytest.raises(ConfigError):
        from_dict(raw)
    assert [list(e.absolute_path) for e in validator().iter_errors(raw)] == [path]
