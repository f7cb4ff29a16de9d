import os

import pytest

from marketfeed.cli.main import main
from marketfeed.cli.reload import plan
from marketfeed.config.loader import ConfigError, from_dict, load, to_toml
from marketfeed.feeds.binance import BinanceOptions, BinanceProtocol
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


# --- environment overrides by feed name, unknown names, and problems naming where a value came from

def test_a_feed_key_is_overridden_by_the_feeds_name_as_a_variable_spells_it(tmp_path):
    dotted = {**KRAKEN, "name": "kraken.eu-2"}
    path = write(tmp_path, {"feeds": [FEED, dotted]})
    config = load(path, env={"MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER_S": "5",
                             "marketfeed_feeds__kraken_eu_2__snapshot": "false",  # names match in any case
                             "MARKETFEED_FEEDS__KRAKEN_EU_2__SYMBOLS": '["ETH/USD", "BTC/USD"]'})
    binance, kraken = config.feeds
    assert binance.stale_after_s == 5.0 and kraken.options == KrakenOptions(snapshot=False)
    assert kraken.symbols == ("ETH/USD", "BTC/USD") and kraken.name == "kraken.eu-2"
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_FEEDS__BINANCE_SPOT__RECONNECT_MIN_S": "-1"})
    assert info.value.problems == [
        ("$MARKETFEED_FEEDS__BINANCE_SPOT__RECONNECT_MIN_S: feeds[0] (binance-spot).reconnect_min_s: "
        "-1.0 is below the minimum 0.0")]


def test_a_feed_name_no_feed_or_two_feeds_have_as_a_variable_is_a_problem(tmp_path):
    path = write(tmp_path, {"feeds": [FEED, {**FEED, "name": "binance_spot"}, KRAKEN]})
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER_S": "5", "MARKETFEED_FEEDS__KRAKN__URL": "wss://x"})
    assert info.value.problems == [
        ("$MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER_S: feeds 'binance-spot' and 'binance_spot' are both "
         "BINANCE_SPOT in a variable name: name one by its index, MARKETFEED_FEEDS__<n>__<KEY> (n from 0)"),
        ("$MARKETFEED_FEEDS__KRAKN__URL: the config has no feed named KRAKN in a variable name "
         "(its feeds so named: BINANCE_SPOT, KRAKEN); did you mean KRAKEN?"),
    ]
    assert load(path, env={"MARKETFEED_FEEDS__1__STALE_AFTER_S": "5"}).feeds[1].stale_after_s == 5.0


def test_an_unknown_marketfeed_variable_is_a_problem_with_the_closest_known_name(tmp_path):
    path = write(tmp_path, {"feeds": [FEED]})
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_SINKS__MAX_ROWS": "5", "MARKETFEED_SINK__MAX_ROWZ": "5",
                        "MARKETFEED_SINK_MAX_ROWS": "5", "MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER": "5",
                        "MARKETFEED_COLOUR": "red", "OTHER_SINK__MAX_ROWS": "5"})
    assert info.value.problems == [
        ("$MARKETFEED_COLOUR: not a setting (MARKETFEED_<SECTION>__<KEY>, or MARKETFEED_FEEDS__<FEED>__<KEY> "
         "for a [[feeds]] table)"),
        ("$MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER: no feed takes the key 'stale_after'; "
         "did you mean MARKETFEED_FEEDS__BINANCE_SPOT__STALE_AFTER_S?"),
        "$MARKETFEED_SINKS__MAX_ROWS: the config has no section [sinks]; did you mean MARKETFEED_SINK__MAX_ROWS?",
        ("$MARKETFEED_SINK_MAX_ROWS: not a setting (MARKETFEED_<SECTION>__<KEY>, or MARKETFEED_FEEDS__<FEED>__<KEY> "
         "for a [[feeds]] table); did you mean MARKETFEED_SINK__MAX_ROWS?"),
        "$MARKETFEED_SINK__MAX_ROWZ: [sink] has no key 'max_rowz'; did you mean MARKETFEED_SINK__MAX_ROWS?",
    ]


def test_a_misspelt_key_or_section_in_the_file_is_named_with_the_closest_known_one():
    assert problems_of({"sinks": {}, "sink": {"max_rowz": 5}, "feeds": [{**KRAKEN, "snapshots": True}]}) == [
        "f.toml: unknown section [sinks]; did you mean sink?",
        "f.toml: sink.max_rowz: unknown key; did you mean max_rows?",
        ("f.toml: feeds[0] (kraken).snapshots: unknown key; did you mean snapshot? "
         "(a kraken feed takes the common keys and snapshot)"),
    ]


def test_problems_across_keys_name_the_variable_a_value_came_from(tmp_path):
    path = write(tmp_path, {"feeds": [FEED, KRAKEN]})
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_FEEDS__BINANCE_SPOT__URL": "ftp://x", "MARKETFEED_FEEDS__KRAKEN__SYMBOLS": "[]",
                        "MARKETFEED_FEEDS__KRAKEN__RECONNECT_MIN_S": "60", "MARKETFEED_FEEDS__1__NAME": "../k",
                        "MARKETFEED_FEEDS__0__CHANNELS": '["trade"]', "MARKETFEED_FEEDS__1__CHANNELS": '["ohlc-7"]',
                        "MARKETFEED_SERVICE__CA_FILE": str(tmp_path / "no-ca.pem"),
                        "MARKETFEED_QUESTDB__CONF": "https::addr=db:9000;tls_verify=unsafe_off;"})
    found = info.value.problems
    assert found[:3] == [
        ("$MARKETFEED_FEEDS__BINANCE_SPOT__URL: feeds (binance-spot).url: 'ftp://x' is not a ws://, wss://, "
        "http:// or https:// URL"),
        "$MARKETFEED_FEEDS__KRAKEN__SYMBOLS: feeds (../k).symbols: at least one symbol is needed",
        ("$MARKETFEED_FEEDS__KRAKEN__RECONNECT_MIN_S: feeds (../k).reconnect_min_s: reconnect_max_s 30.0 is below "
         "reconnect_min_s 60.0"),
    ]
    assert found[3].startswith("$MARKETFEED_FEEDS__1__CHANNELS: feeds (../k).channels: Kraken channel 'ohlc-7'")
    assert found[4:] == [
        "$MARKETFEED_FEEDS__1__NAME: feeds[1].name: '../k' is not one of [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        f"$MARKETFEED_SERVICE__CA_FILE: service.ca_file: file {str(tmp_path / 'no-ca.pem')!r} not found",
        ("$MARKETFEED_QUESTDB__CONF: questdb.conf: tls_verify=unsafe_off is refused: certificates are always "
         "verified (a private CA goes in tls_roots=/path/ca.pem)"),
    ]


def test_problems_of_the_environment_and_of_the_file_are_reported_together(tmp_path):
    path = write(tmp_path, {"sink": {"max_rows": 0}, "feeds": [FEED]})
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_SINK__MAX_ROWZ": "5"})
    assert info.value.problems == [
        "$MARKETFEED_SINK__MAX_ROWZ: [sink] has no key 'max_rowz'; did you mean MARKETFEED_SINK__MAX_ROWS?",
        f"{path}: sink.max_rows: 0 is below the minimum 1",
    ]


def test_an_exchanges_config_problems_are_named_by_the_key_and_where_it_came_from(tmp_path, monkeypatch):
    """The hook feeds/<exchange>.py fills: FeedProtocol.config_problems(feed), "<key>: <why>" each."""
    def refuse(cls, feed):
        return [f"channels: {feed.channels[0]!r} is not a channel of this test", "the feed as a whole is refused"]

    monkeypatch.setattr(BinanceProtocol, "config_problems", classmethod(refuse))
    path = write(tmp_path, {"feeds": [FEED, {**FEED, "name": "other", "channels": ["depth"]}, KRAKEN]})
    with pytest.raises(ConfigError) as info:
        load(path, env={"MARKETFEED_FEEDS__BINANCE_SPOT__CHANNELS": '["kline_7q"]'})
    assert info.value.problems == [
        ("$MARKETFEED_FEEDS__BINANCE_SPOT__CHANNELS: feeds (binance-spot).channels: 'kline_7q' is not a channel "
        "of this test"),
        f"{path}: feeds (binance-spot): the feed as a whole is refused",
        f"{path}: feeds (other).channels: 'depth' is not a channel of this test",
        f"{path}: feeds (other): the feed as a whole is refused",
    ]


def test_binance_refuses_streams_it_does_not_have_naming_the_key():
    found = problems_of({"feeds": [{**FEED, "channels": ["trade", "depth", "kline_7q", "kline_1m"]}]})
    assert len(found) == 2 and all("channels: " in p and "is not a Binance stream" in p for p in found), found
    assert "'depth'" in found[0] and "'kline_7q'" in found[1]
