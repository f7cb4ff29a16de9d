"""`marketfeed demo`, the README's first command, really runs: QuestDB, every simulated exchange, rows stored."""
import os
import subprocess
import sys

import pytest

from tests.support.questdb import REPO, free_port

pytestmark = pytest.mark.integration  # the demo starts a QuestDB and the service of its own


def test_demo_stores_trades_of_every_simulated_exchange(tmp_path):
    env = {**os.environ, "QDB_ROOT": str(tmp_path / "questdb"), "QDB_HTTP_PORT": str(free_port()),
           "QDB_PG_PORT": str(free_port())}
    try:
        run = subprocess.run(
            [sys.executable, "-m", "marketfeed.cli.main", "demo", "--duration", "6", "--rate", "20",
             "--http-listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "var")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run([str(REPO / "bin/questdb"), "stop"], env=env, capture_output=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"http://127.0.0.1:{env['QDB_HTTP_PORT']}" in run.stdout  # where to look
    stored = {line.split()[0] for line in run.stdout.splitlines()[run.stdout.splitlines().index(
        "stored in QuestDB (demo_trades):") + 1:] if line.startswith("  ")}
    assert stored == {"binance", "kraken", "coinbase", "polygon"}
    assert (tmp_path / "var" / "demo-status.json").exists()
