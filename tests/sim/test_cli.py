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
        urls = orjson.loads(process.stdout.readline())
        assert urls["binance"]["rest"].startswith("http://127.0.0.1:")
        ws = websocket.create_connection(urls["binance"]["ws"] + "/ws/btcusdt@trade", timeout=5)
        ids = [orjson.loads(ws.recv())["t"] for _ in range(40)]
        ws.close()
        assert len(set(range(ids[0], ids[-1] + 1)) - set(ids)) >= 2  # one trade in ten lost in transit
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
