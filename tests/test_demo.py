"""`marketfeed demo`, the README's first command, really runs: QuestDB, every simulated exchange, rows stored; run
again, it stays clean (each run has tables of its own), and the console URL it prints answers at once."""
import http.client
import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from tests.support.questdb import REPO, free_port

pytestmark = pytest.mark.integration  # the demo starts a QuestDB and the service of its own


def stored_exchanges(stdout: str) -> set[str]:
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if re.fullmatch(r"stored in QuestDB \(demo_\w+_trades\):", line))
    return {line.split()[0] for line in lines[first + 1:] if line.startswith("  ")}


def test_demo_stores_trades_of_every_simulated_exchange_and_a_second_run_stays_clean(tmp_path):
    env = {**os.environ, "QDB_ROOT": str(tmp_path / "questdb"), "QDB_HTTP_PORT": str(free_port()),
           "QDB_PG_PORT": str(free_port())}
    var = tmp_path / "var"

    def marketfeed(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "marketfeed.cli.main", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)

    def demo() -> subprocess.CompletedProcess:
        run = marketfeed("demo", "--duration", "4", "--rate", "20", "--http-listen", f"127.0.0.1:{free_port()}",
                         "--state-dir", str(var))
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        return run

    try:
        first, second = demo(), demo()
        console = re.search(r"QuestDB console\s+(\S+)", first.stdout)[1]  # type: ignore[index]
        assert console.startswith(f"http://127.0.0.1:{env['QDB_HTTP_PORT']}/")
        where = urlsplit(console)
        conn = http.client.HTTPConnection(where.netloc, timeout=10)
        conn.request("GET", where.path)  # as a plain curl does: no redirect followed
        answer = conn.getresponse()
        assert answer.status == 200 and b"<html" in answer.read().lower()
        conn.close()
        verified = marketfeed("verify", "-c", str(var / "demo.toml"))  # the second run's tables
    finally:
        subprocess.run([str(REPO / "bin/questdb"), "stop"], env=env, capture_output=True)
    assert stored_exchanges(first.stdout) == stored_exchanges(second.stdout) == {"binance", "kraken", "coinbase",
                                                                                 "polygon"}
    tables = [re.search(r"stored in QuestDB \((\w+)\):", run.stdout)[1] for run in (first, second)]  # type: ignore[index]
    assert tables[0] != tables[1]
    assert verified.returncode == 0 and verified.stdout.rstrip().endswith("clean"), verified.stdout + verified.stderr
    assert " 0 " in verified.stdout and "duplicate:" not in verified.stdout
    assert (var / "demo-status.json").exists()
