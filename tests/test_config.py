import os

import pytest

from marketfeed.config.loader import ConfigError, from_dict, load

FEED = {"name": "binance-spot", "exchange": "binance", "url": "wss://stream.binance.com:9443",
        "rest_url": "https://api.binance.com", "symbols": ["BTCUSDT"]}


def test_defaults_and_feed():
    config = from_dict({"feeds": [FEED]})
    assert config.sink.max_rows == 10_000
    assert config.feeds[0].symbols == ("BTCUSDT",)
    assert config.feeds[0].channels == ("trade",)


def test_every_problem_is_reported_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[sink]\nmax_rowz = 5\nflush_interval_s = "soon"\n[questdb]\nconf = 1\n'
                    '[[feeds]]\nname = "x"\nexchange = "nowhere"\nurl = "ftp://x"\nsymbols = ["A"]\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    text = str(info.value)
    assert f"{path}: sink.max_rowz: unknown key" in text
    assert "sink.flush_interval_s: expected a number" in text
    assert "questdb.conf: expected a string" in text
    assert "feeds (x).exchange: unknown exchange 'nowhere'" in text
    assert "feeds (x).url: 'ftp://x' is not a ws://" in text
    assert len(info.value.problems) == 5


def test_out_of_range_and_missing_keys():
    with pytest.raises(ConfigError) as info:
        from_dict({"sink": {"max_rows": 0}, "feeds": [{"name": "x", "exchange": "binance"}]})
    problems = info.value.problems
    assert any("sink.max_rows: 0 is below the minimum 1" in p for p in problems)
    assert any("feeds[0] (x).url: required key is missing" in p for p in problems)
    assert any("feeds[0] (x).symbols: required key is missing" in p for p in problems)


def test_environment_overrides(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[sink]\nmax_rows = 5\n")
    config = load(path, env={"MARKETFEED_SINK__MAX_ROWS": "7", "MARKETFEED_QUESTDB__CONF": "http::addr=h:1;"})
    assert config.sink.max_rows == 7
    assert config.questdb.conf == "http::addr=h:1;"


def test_shipped_example_config_is_valid():
    example = os.path.join(os.path.dirname(__file__), "..", "config", "marketfeed.example.toml")
    config = load(example, env={})
    assert {f.exchange for f in config.feeds} >= {"binance"}
