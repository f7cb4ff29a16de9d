"""The benchmark runs end to end (tiny durations) and writes its files. No timing is asserted."""
import subprocess
import sys

import orjson
import pytest

from tests.support.questdb import REPO

pytestmark = pytest.mark.integration  # the benchmark starts a QuestDB, simulators and the service of its own


def test_quick_benchmark_writes_json_markdown_chart_and_profiles(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=230)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    ceilings = results["ceilings"]
    assert ceilings["tls"].startswith("TLSv1.3")  # the stream really was TLS, as the exchanges serve it
    assert set(ceilings["modes"]) == {"double", "decimal"}
    assert [(r["mode"], r["feeds"]) for r in results["max_rate"]] == [("double", 1), ("decimal", 1)]
    assert all(r["ids_complete"] for r in results["max_rate"])  # every simulated id reached QuestDB, in both modes
    assert set(results["max_rate"][0]["ratios"]) == {"raw_tls_read", "frame_decoder", "parse", "row_building",
                                                     "questdb_ingest"}
    assert results["outage"]["ids_complete_after"]
    assert "| marketfeed, DECIMAL, 1 feed |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for mode in ("double", "decimal"):  # py-spy attached (we run as root here) and wrote its flame graph
        assert results["profiles"][mode] == {"file": f"profile-{mode}.svg"}
        assert (tmp_path / f"profile-{mode}.svg").read_bytes().startswith(b"<?xml")
