import os

import pytest

from marketfeed.cli.main import main
from marketfeed.cli.reload import plan
from marketfeed.config.loader import ConfigError, from_dict, load, to_toml
from marketfeed.feeds.binance import BinanceOptions
from marketfeed.feeds.kraken import KrakenOptions
from marketfeed.feeds.polygon import PolygonOptions

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


KRAKEN = {"name": "kraken", "exchange": "kraken", "url": "wss://ws.kraken.com", "symbols": ["BTC/USD"]}
POLYGON = {"name": "stocks", "exchange": "polygon", "url": "wss://socket.polygon.io/stocks", "symbols": ["AAPL"]}


def write(tmp_path, raw: dict):
    path = tmp_path / "marketfeed.toml"
    path.write_text(to_toml(raw))
    return path


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_dict(raw, source="f.toml")
    return info.value.problems


def test_exchange_options_sit_beside_the_common_keys_and_land_in_the_exchanges_options():
    keyed = {**POLYGON, "api_key": "k-123456", "min_trade_value": 1000, "contract_multiplier": 10}
    config = from_dict({"feeds": [FEED, {**KRAKEN, "snapshot": False}, keyed]})
    binance, kraken, polygon = config.feeds
    assert binance.options == BinanceOptions() and kraken.options == KrakenOptions(snapshot=False)
    assert polygon.options == PolygonOptions(api_key="k-123456", min_trade_value=1000.0, contract_multiplier=10.0)
    default = from_dict({"feeds": [KRAKEN]}).feeds[0].options
    assert isinstance(default, KrakenOptions) and default.snapshot is True  # the exchange's default
    assert "k-123456" not in repr(polygon)


@pytest.mark.parametrize("exchange", ["nowhere", "dedup", "base"])  # "dedup", "base": modules of feeds/, not exchanges
def test_an_unknown_exchange_is_a_config_error_naming_the_valid_ones(exchange):
    valid = "binance, kraken, coinbase, polygon"
    assert problems_of({"feeds": [{**FEED, "exchange": exchange}]}) == [
        f"f.toml: feeds (binance-spot).exchange: unknown exchange {exchange!r} (one of {valid})"]


def test_check_config_exits_2_on_an_unknown_exchange(tmp_path, capsys):
    path = write(tmp_path, {"feeds": [{**FEED, "exchange": "dedup"}]})
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "-c", str(path)])
    assert exited.value.code == 2
    assert "feeds (binance-spot).exchange: unknown exchange 'dedup' (one of binance" in capsys.readouterr().err


def test_a_key_of_another_exchange_or_of_none_is_refused_naming_what_the_exchange_takes():
    assert problems_of({"feeds": [{**FEED, "snapshot": False}, {**KRAKEN, "api_key": "k", "colour": "red"},
                                  {**POLYGON, "options": {"snapshot": True}}]}) == [
        ("f.toml: feeds[0] (binance-spot).snapshot: a key of kraken feeds, not of binance "
         "(a binance feed takes the common keys only)"),
        ("f.toml: feeds[1] (kraken).api_key: a key of polygon feeds, not of kraken "
         "(a kraken feed takes the common keys and snapshot)"),
        "f.toml: feeds[1] (kraken).colour: unknown key (a kraken feed takes the common keys and snapshot)",
        ("f.toml: feeds[2] (stocks).options: unknown key "
         "(a polygon feed takes the common keys and api_key, api_key_file, min_trade_value, contract_multiplier)"),
    ]


def test_exchange_options_are_checked_for_type_and_bounds_with_the_common_keys():
    assert problems_of({"feeds": [{**KRAKEN, "snapshot": "no", "stale_after_s": 0},
                                  {**POLYGON, "min_trade_value": -1, "contract_multiplier": "x"}]}) == [
        "f.toml: feeds[0] (kraken).stale_after_s: 0.0 is below the minimum 0.1",
        "f.toml: feeds[0] (kraken).snapshot: expected true/false, got 'no'",
        "f.toml: feeds[1] (stocks).min_trade_value: -1.0 is below the minimum 0.0",
        "f.toml: feeds[1] (stocks).contract_multiplier: expected a number, got 'x'",
    ]


def test_an_environment_variable_overrides_a_feed_key_and_is_named_in_its_problems(tmp_path):
    path = write(tmp_path, {"feeds": [FEED, KRAKEN]})
    config = load(path, env={"MARKETFEED_FEEDS__1__SNAPSHOT": "false", "MARKETFEED_FEEDS__0__STALE_AFTER_S": "5"})
    assert config.feeds[1].options == KrakenOptions(snapshot=False) and config.feeds[0].stale_after_s == 5.0
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_FEEDS__2__URL": "wss://x"})
    assert info.value.problems == [
        "$MARKETFEED_FEEDS__2__URL: the config has no feeds[2] (its 2 [[feeds]] tables count from 0)"]
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_FEEDS__1__SNAPSHOT": "sometimes", "MARKETFEED_FEEDS__0__SNAPSHOT": "true",
                        "MARKETFEED_SINK__MAX_ROWS": "0"})
    assert info.value.problems == [
        "$MARKETFEED_SINK__MAX_ROWS: sink.max_rows: 0 is below the minimum 1",
        ("$MARKETFEED_FEEDS__0__SNAPSHOT: feeds[0] (binance-spot).snapshot: a key of kraken feeds, not of binance "
         "(a binance feed takes the common keys only)"),
        "$MARKETFEED_FEEDS__1__SNAPSHOT: feeds[1] (kraken).snapshot: expected true/false, got 'sometimes'",
    ]


def test_the_polygon_key_is_resolved_by_the_config_api_key_then_file_then_environment(tmp_path):
    key_file, env_file = tmp_path / "key", tmp_path / "env-key"
    key_file.write_text("from-file\n")
    env_file.write_text("from-env-file\n")
    both = {"POLYGON_API_KEY": "from-env", "POLYGON_API_KEY_FILE": str(env_file)}

    def key(feed: dict, env: dict) -> str:
        options = load(write(tmp_path, {"feeds": [feed]}), env=env).feeds[0].options
        assert isinstance(options, PolygonOptions)
        return options.api_key

    assert key({**POLYGON, "api_key": "from-config"}, both) == "from-config"
    assert key({**POLYGON, "api_key_file": str(key_file)}, both) == "from-file"
    assert key(POLYGON, both) == "from-env"
    assert key(POLYGON, {"POLYGON_API_KEY_FILE": str(env_file)}) == "from-env-file"
    assert key(POLYGON, {"MARKETFEED_FEEDS__0__API_KEY_FILE": str(key_file), **both}) == "from-file"
    assert key(POLYGON, {}) == ""  # no key anywhere: the protocol names the ways to give one when auth fails
    assert load(write(tmp_path, {"feeds": [FEED]}), env=both).feeds[0].options == BinanceOptions()


def test_an_unreadable_or_empty_polygon_key_file_is_a_config_problem_naming_its_variable(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    path = write(tmp_path, {"feeds": [POLYGON, {**POLYGON, "name": "options", "api_key_file": str(empty)}]})
    with pytest.raises(ConfigError) as info:
        load(path, env={"POLYGON_API_KEY_FILE": str(tmp_path / "absent")})
    assert info.value.problems == [
        f"$POLYGON_API_KEY_FILE (for feeds[0] (stocks).api_key): file {str(tmp_path / 'absent')!r} not found",
        f"{path}: feeds[1] (options).api_key_file: file {str(empty)!r} is empty",
    ]


def test_a_changed_exchange_option_restarts_that_feed_alone_on_reload():
    old = from_dict({"feeds": [FEED, KRAKEN]})
    new = from_dict({"feeds": [FEED, {**KRAKEN, "snapshot": False}]})
    assert plan(old, new).changed == (new.feeds[1],) and not plan(old, from_dict({"feeds": [FEED, KRAKEN]})).changed
