"""`python -m sim` serves until SIGTERM and says where, as one JSON line."""
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest
import websocket

from marketfeed.sim.cli import RestFault, RestFaultKind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_standalone_run_serves_and_stops_on_sigterm():
    argv = [sys.executable, "-m", "sim", "--symbols", "BTCUSDT", "--rate", "200", "--seed", "3", "--skip-every", "10"]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None  # stdout=PIPE
        urls = orjson.loads(process.stdout.readline())
        assert urls["binance"]["rest"].startswith("http://127.0.0.1:")
        ws = websocket.create_connection(urls["binance"]["ws"] + "/ws/btcusdt@trade", timeout=5)
        ids = [orjson.loads(ws.recv())["t"] for _ in range(40)]
        ws.close()
        assert len(set(range(ids[0], ids[-1] + 1)) - set(ids)) >= 2  # one trade in ten lost in transit
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_symbols_can_be_given_per_exchange():
    from marketfeed.sim.cli import symbols_by_exchange

    exchanges = ["binance", "kraken", "coinbase"]
    assert symbols_by_exchange(["SOLUSDT", "kraken=BTC/USD, ETH/USD"], exchanges) == {
        "binance": ["SOLUSDT"], "kraken": ["BTC/USD", "ETH/USD"], "coinbase": ["SOLUSDT"]}
    assert symbols_by_exchange([], ["binance"]) == {"binance": ["BTCUSDT", "ETHUSDT"]}
    argv = [sys.executable, "-m", "sim", "--exchange", "binance", "--symbols", "polygon=AAPL"]
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "'polygon' is not one of the --exchange twins" in refused.stderr


def test_marketfeed_sim_serves_each_exchange_its_own_symbols():
    argv = [sys.executable, "-m", "marketfeed.cli.main", "sim", "--exchange", "binance", "--exchange", "kraken",
            "--symbols", "SOLUSDT", "--symbols", "kraken=ETH/USD", "--rate", "50"]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None  # stdout=PIPE
        urls = orjson.loads(process.stdout.readline())
        ws = websocket.create_connection(urls["binance"]["ws"] + "/ws/solusdt@trade", timeout=5)
        assert orjson.loads(ws.recv())["s"] == "SOLUSDT"
        ws.close()
        ws = websocket.create_connection(urls["kraken"]["ws"] + "/v2", timeout=5)
        ws.send(orjson.dumps({"method": "subscribe", "params": {"channel": "trade", "symbol": ["ETH/USD"]}}))
        while (msg := orjson.loads(ws.recv())).get("channel") != "trade":
            assert msg.get("success", True), msg  # the status update, the subscribe ack
        assert {t["symbol"] for t in msg["data"]} == {"ETH/USD"}
        ws.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def status_of(url: str) -> tuple[int, str | None, str | None]:
    """(status, Retry-After, X-MBX-USED-WEIGHT-1M) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Retry-After"], response.headers["X-MBX-USED-WEIGHT-1M"]
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Retry-After"], error.headers["X-MBX-USED-WEIGHT-1M"]


def test_rest_faults_from_the_command_line_apply_at_start_and_again_every_rest_every_seconds():
    argv = [sys.executable, "-m", "marketfeed.cli.main", "sim", "--exchange", "binance", "--exchange", "coinbase",
            "--symbols", "BTCUSDT", "--symbols", "coinbase=BTC-USD", "--rate", "200", "--count", "40",
            "--rest-throttle", "binance=2:1", "--rest-errors", "binance=1:500", "--binance-weight-limit", "30",
            "--coinbase-string-ids", "--rest-errors", "coinbase=1", "--rest-every", "3"]  # 3 s: after these asserts
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None  # stdout=PIPE
        urls = orjson.loads(process.stdout.readline())
        binance = urls["binance"]["rest"] + "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1000000&limit=2"
        assert [status_of(binance) for _ in range(4)] == [
            (429, "1", "0"), (429, "1", "0"), (500, None, "0"), (200, None, "25")]
        coinbase = urls["coinbase"]["rest"] + "/products/BTC-USD/trades?limit=2"
        assert status_of(coinbase)[0] == 503
        deadline = time.monotonic() + 10
        while (answer := status_of(coinbase))[0] != 503:  # until --rest-every applies the fault again
            assert answer[0] == 200 and time.monotonic() < deadline
            time.sleep(0.05)
        with urllib.request.urlopen(coinbase, timeout=5) as response:
            assert all(isinstance(t["trade_id"], str) for t in orjson.loads(response.read()))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(("options", "message"), [
    (["--rest-throttle", "binance=x:2"], "expected EXCHANGE=N:N with at least 1 number"),
    (["--rest-errors", "binance=1:503:2:9"], "expected EXCHANGE=N:N:N"),
    (["--rest-ban", "kraken=5"], "'kraken' is not one of the --exchange twins"),
    (["--exchange", "kraken", "--rest-ban", "kraken=5"], "bans IPs"),
    (["--exchange", "kraken", "--rest-throttle", "kraken=1:5"], "no Retry-After"),
])
def test_rest_faults_the_exchange_never_gives_are_refused_with_exit_2(options, message):
    argv = [sys.executable, "-m", "sim", *options]
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and message in refused.stderr


def test_rest_fault_options_parse_into_what_they_apply():
    assert RestFault.parse(RestFaultKind.ERRORS, "kraken=3:200", ["kraken"]) == RestFault(
        RestFaultKind.ERRORS, "kraken", (3, 200))
    assert RestFault.parse(RestFaultKind.THROTTLE, "binance=3:2", ["binance"]).numbers == (3, 2)
