"""`python -m sim` serves until SIGTERM and says where, as one JSON line."""
import os
import signal
import subprocess
import sys

import orjson
import websocket

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
