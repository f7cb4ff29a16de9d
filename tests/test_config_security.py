"""Config hardening: world-writable files refused, secrets from files, TLS verification without an off switch,
no SQL or path from the table prefix, no NaN or infinity in any number."""
from __future__ import annotations

import dataclasses
import logging
import math
import typing

import pytest

from marketfeed.config.loader import ConfigError, load, to_toml
from marketfeed.config.schema import Config, FeedConfig
from marketfeed.feeds import registry
from marketfeed.feeds.polygon import PolygonOptions
from marketfeed.storage.tables import CANDLES, TRADES
from marketfeed.telemetry.http import OpsServer

FEED = {"name": "b", "exchange": "binance", "url": "wss://stream.example:9443", "symbols": ["BTCUSDT"]}
KEYED_FEED = {**FEED, "exchange": "polygon"}  # an exchange with an API key


def write(tmp_path, raw: dict, name="marketfeed.toml", mode=0o600):
    path = tmp_path / name
    path.write_text(to_toml(raw))
    path.chmod(mode)
    return path


def problems(path, env=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env=env or {})
    return info.value.problems


def test_a_world_writable_config_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, {"feeds": [FEED]}, mode=0o666)
    assert problems(path) == [f"{path}: is group- or world-writable (mode 666); refusing it — run chmod go-w on it"]
    path.chmod(0o644)
    assert load(path, env={}).feeds[0].name == "b"


def test_group_writable_config_and_ca_files_are_refused_and_bad_feed_names_named(tmp_path):
    path = write(tmp_path, {"feeds": [FEED]}, mode=0o664)
    assert problems(path) == [f"{path}: is group- or world-writable (mode 664); refusing it — run chmod go-w on it"]
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ca.chmod(0o620)
    found = problems(write(tmp_path, {"service": {"ca_file": str(ca)}, "feeds": [{**FEED, "name": "../x"}]}))
    assert found == [(f"{tmp_path / 'marketfeed.toml'}: feeds[0].name: '../x' is not one of "
                     "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
                     (f"{tmp_path / 'marketfeed.toml'}: service.ca_file: file {str(ca)!r} is group- or world-writable "
                     "(mode 620); refusing it — run chmod go-w on it")]


def test_questdb_credentials_come_from_the_file_a_conf_file_variable_names(tmp_path):
    secret = tmp_path / "conf"
    secret.write_text("https::addr=db:9000;username=u;password=p4ssw0rd;\n")  # trailing newline: as editors save
    config = load(write(tmp_path, {"feeds": [FEED]}), env={"MARKETFEED_QUESTDB__CONF_FILE": str(secret),
                                                          "MARKETFEED_QUESTDB__CONF": "http::addr=ignored:1;"})
    assert config.questdb.conf == "https::addr=db:9000;username=u;password=p4ssw0rd;"
    assert "p4ssw0rd" not in repr(config)


def test_unreadable_or_world_writable_secret_files_are_problems_naming_the_variable(tmp_path):
    open_secret = tmp_path / "open"
    open_secret.write_text("x")
    open_secret.chmod(0o666)
    found = problems(write(tmp_path, {}), env={"MARKETFEED_QUESTDB__CONF_FILE": str(tmp_path / "missing"),
                                              "MARKETFEED_QUESTDB__PG_DSN_FILE": str(open_secret)})
    assert found == [f"$MARKETFEED_QUESTDB__CONF_FILE: file {str(tmp_path / 'missing')!r} not found",
                     (f"$MARKETFEED_QUESTDB__PG_DSN_FILE: file {str(open_secret)!r} is group- or world-writable "
                      "(mode 666); refusing it — run chmod go-w on it")]


def test_a_feed_api_key_comes_from_api_key_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("k-123456\n")
    config = load(write(tmp_path, {"feeds": [{**KEYED_FEED, "api_key_file": str(key)}]}), env={})
    options = config.feeds[0].options
    assert isinstance(options, PolygonOptions)
    assert options.api_key == "k-123456" and "k-123456" not in repr(config)
    path = write(tmp_path, {"feeds": [{**KEYED_FEED, "api_key_file": str(key), "api_key": "inline"},
                                      {**KEYED_FEED, "name": "c", "api_key_file": str(tmp_path / "nope")}]})
    assert problems(path) == [f"{path}: feeds[0] (b).api_key_file: set api_key or api_key_file, not both",
                              f"{path}: feeds[1] (c).api_key_file: file {str(tmp_path / 'nope')!r} not found"]


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path):
    path = write(tmp_path, {"questdb": {"pg_dsn": ["password=hunter22"]},
                            "feeds": [{**KEYED_FEED, "api_key": 123456789}]})
    found = problems(path)
    hidden = "(not shown: it is a secret)"
    assert found == [f"{path}: questdb.pg_dsn: expected a string, got a value of type list {hidden}",
                     f"{path}: feeds[0] (b).api_key: expected a string, got a value of type int {hidden}"]


def test_certificate_verification_cannot_be_switched_off(tmp_path):
    path = write(tmp_path, {"questdb": {"conf": "https::addr=db:9000;tls_verify=unsafe_off;"},
                            "service": {"ca_file": str(tmp_path / "no-ca.pem")}, "feeds": [FEED]})
    assert problems(path) == [
        f"{path}: service.ca_file: file {str(tmp_path / 'no-ca.pem')!r} not found",
        (f"{path}: questdb.conf: tls_verify=unsafe_off is refused: certificates are always verified "
         "(a private CA goes in tls_roots=/path/ca.pem)"),
    ]


def test_the_service_ca_file_is_every_feeds_default(tmp_path):
    ca, own = tmp_path / "ca.pem", tmp_path / "own.pem"
    ca.write_text("x")
    own.write_text("x")
    config = load(write(tmp_path, {"service": {"ca_file": str(ca)},
                                   "feeds": [FEED, {**FEED, "name": "c", "ca_file": str(own)}]}), env={})
    assert [f.ca_file for f in config.feeds] == [str(ca), str(own)]


@pytest.mark.parametrize("listen, warned", [("127.0.0.1:0", False), ("0.0.0.0:0", True)])
def test_binding_the_http_endpoints_beyond_loopback_logs_a_warning(listen, warned, caplog):
    server = OpsServer(listen, lambda: None, 10.0)
    with caplog.at_level(logging.WARNING, logger="marketfeed.http"):
        server.start()
    server.stop()
    assert ("http_not_loopback" in caplog.messages) == warned


# --- values that become SQL or paths, and numbers no bound can hold

@pytest.mark.parametrize("prefix", ["x; DROP TABLE trades; --", "../../", "a/b_", "p-", "p ", "1p_", "é_", "p\n",
                                    "p" * 65])
def test_a_table_prefix_that_is_no_plain_identifier_is_refused_naming_the_key(tmp_path, prefix):
    path = write(tmp_path, {"questdb": {"table_prefix": prefix}, "feeds": [FEED]})
    choices = "'', [A-Za-z_][A-Za-z0-9_]{0,63}"
    assert problems(path) == [f"{path}: questdb.table_prefix: {prefix!r} is not one of {choices}"]
    with pytest.raises(ValueError, match="table prefix"):  # and never formatted into DDL, queries or paths from code
        TRADES.name_in_db(prefix)


@pytest.mark.parametrize("prefix", ["", "demo_", "t12345_0_Test_x_", "_p", "p" * 64])
def test_a_plain_table_prefix_is_taken(tmp_path, prefix):
    config = load(write(tmp_path, {"questdb": {"table_prefix": prefix}, "feeds": [FEED]}), env={})
    assert config.questdb.table_prefix == prefix and CANDLES.name_in_db(prefix) == f"{prefix}candles"


def _floats(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if typing.get_type_hints(cls)[f.name] is float]


def _float_keys():
    """(section, or the exchange of a [[feeds]] table, key) of every float option, exchange options included."""
    sections = {name: hint for name, hint in typing.get_type_hints(Config).items() if name not in ("feeds", "source")}
    keys = [(name, key) for name, cls in sections.items() for key in _floats(cls)]
    keys += [("binance", key) for key in _floats(FeedConfig)]
    return keys + [(name, key) for name, entry in registry.EXCHANGES.items() for key in _floats(entry.options)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("section, key", _float_keys())
def test_no_float_option_takes_nan_or_infinity(tmp_path, section, key, value):
    raw: dict
    if section in registry.EXCHANGES:
        key_option = {"api_key": "k"} if section == "polygon" else {}
        raw = {"feeds": [{**FEED, "exchange": section, key: value, **key_option}]}
        where = "feeds[0] (b)"
    else:
        raw, where = {section: {key: value}, "feeds": [FEED]}, section
    path = write(tmp_path, raw)  # to_toml writes nan, inf, -inf: TOML's own spelling
    assert problems(path) == [f"{path}: {where}.{key}: {value!r} is not a finite number"]


def test_a_non_finite_number_from_the_environment_is_named_by_its_variable(tmp_path):
    path = write(tmp_path, {"feeds": [FEED]})
    found = problems(path, env={"MARKETFEED_SINK__FLUSH_INTERVAL_S": "nan",
                                "MARKETFEED_SERVICE__STATUS_INTERVAL_S": "inf",
                                "MARKETFEED_FEEDS__0__STALE_AFTER_S": "-inf"})
    assert found == ["$MARKETFEED_SERVICE__STATUS_INTERVAL_S: service.status_interval_s: inf is not a finite number",
                     "$MARKETFEED_SINK__FLUSH_INTERVAL_S: sink.flush_interval_s: nan is not a finite number",
                     "$MARKETFEED_FEEDS__0__STALE_AFTER_S: feeds[0] (b).stale_after_s: -inf is not a finite number"]
