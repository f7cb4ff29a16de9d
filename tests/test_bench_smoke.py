"""The benchmark runs end to end (tiny durations) and writes its three files. No timing is asserted."""
import subprocess
import sys

import orjson
import pytest

from tests.support.questdb import REPO

pytestmark = pytest.mark.integration  # the benchmark starts a QuestDB and the service of its own


def test_quick_benchmark_writes_json_markdown_and_chart(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=230)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    assert set(results["ceilings"]) == {"raw_receive_msgs_s", "raw_receive_runs_msgs_s", "orjson_parse_msgs_s",
                                        "binance_parser_msgs_s", "row_building_rows_s", "questdb_ingest_rows_s"}
    assert [r["feeds"] for r in results["max_rate"]] == [1, 4]
    assert all(r["ids_complete"] for r in results["max_rate"])  # every simulated id reached QuestDB
    assert results["latency"][0]["rows"] > 0 and results["outage"]["ids_complete_after"]
    assert "| marketfeed end to end, 1 feed(s), max rate |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
