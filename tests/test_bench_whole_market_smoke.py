"""The whole-market benchmark runs end to end (a tiny market, a few seconds) and writes its two files with every
figure it reports. No timing is asserted."""
import subprocess
import sys

import orjson
import pytest

from tests.support.questdb import REPO

pytestmark = pytest.mark.integration  # the benchmark starts a QuestDB, a simulator and the service of its own

STEP_FIGURES = {"startup_s", "rows_s", "sent_msgs_s", "service_cpu_s_per_1000_msgs", "sim_cpu_s_per_1000_msgs",
                "rss_steady_mb", "receive_lag_ms", "drain_s", "connections", "refusals", "binance_ids_complete",
                "polygon_stored", "polygon_qualifying", "sustained", "limited_by"}


def test_quick_whole_market_writes_json_and_markdown_with_every_figure(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.whole_market", "--quick", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = orjson.loads((tmp_path / "whole_market.json").read_bytes())
    step = results["summary"]["step"]
    assert STEP_FIGURES <= set(step), STEP_FIGURES - set(step)
    connections = step["connections"]
    assert connections["sim_opened"] == {"binance": 3, "polygon": 1}  # 120 streams at 50 a connection; one cluster
    assert connections["universe_resolved"]["binance-usdt"] == {"symbols": 60, "connections": 3}
    assert connections["feed_connected"] == {"binance-usdt": 3, "polygon-options": 1}
    assert step["refusals"] == {"binance": [], "polygon": []}
    assert step["binance_ids_complete"] and step["polygon_stored"] == step["polygon_qualifying"] > 0
    markdown = (tmp_path / "whole_market.md").read_text()
    assert "| connections opened (simulator's log / service's feed_connected) |" in markdown
    assert "| ids complete | Binance yes (every symbol)" in markdown
