"""`marketfeed run` as a real process, fed by the Binance simulator, against its own QuestDB that the
tests stop and start: an outage longer than the client's retry window and a SIGKILL lose nothing and
double nothing, and memory stays bounded while the outage lasts.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from marketfeed.sim import Simulator
from tests.support.questdb import REPO, QuestDB

pytestmark = pytest.mark.integration  # a QuestDB of its own, and the service
SYMBOLS = ("BTCUSDT", "ETHUSDT")
HIGH_WATER_ROWS = 1000
CLIENT_RETRY_MS = 1000  # the questdb client's own retry window; every outage here is several times longer


class Service:
    """One `marketfeed run` subprocess and its files."""

    def __init__(self, tmp: Path, questdb: QuestDB, sim: Simulator, prefix: str):
        self.tmp, self.prefix = tmp, prefix
        self.config = tmp / "marketfeed.toml"
        self.config.write_text(f"""
[service]
status_file = "{tmp}/status.json"
pid_file = "{tmp}/marketfeed.pid"
http_listen = ""
shutdown_timeout_s = 5

[questdb]
conf = "{questdb.conf}retry_timeout={CLIENT_RETRY_MS};request_timeout=2000;"
pg_dsn = "{questdb.pg_dsn}"
table_prefix = "{prefix}"

[sink]
max_rows = 2000
flush_interval_s = 0.1
retry_min_s = 0.1
retry_max_s = 0.5
breaker_reset_s = 0.5
dead_letter_dir = "{tmp}/deadletter"

[ledger]
dir = "{tmp}/ledger"

[spool]
dir = "{tmp}/spool"
high_water_rows = {HIGH_WATER_ROWS}

[[feeds]]
name = "sim"
exchange = "binance"
url = "{sim.url('binance')}"
rest_url = "{sim.rest_url('binance')}"
symbols = {list(SYMBOLS)!r}
stale_after_s = 5
""".replace("'", '"'))
        self.process: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = open(self.tmp / f"run-{self.runs}.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "marketfeed.cli.main", "run", "-c", str(self.config)],
                                        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None, "stop() before start()"
        self.process.send_signal(sig)
        return self.process.wait(30)

    def spooled_rows(self) -> int:
        """Rows waiting in the spool, from the batch file names (<seq>-<rows>.batch)."""
        return sum(int(p.name.split("-")[1].split(".")[0]) for p in (self.tmp / "spool").glob("*/*.batch"))

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("run-*.log")))


@pytest.fixture
def service(tmp_path, own_questdb, table_prefix):
    services = []

    def make(sim: Simulator) -> Service:
        services.append(Service(tmp_path, own_questdb, sim, table_prefix))
        return services[-1]

    yield make
    for s in services:
        if s.process is not None and s.process.poll() is None:
            s.process.kill()
            s.process.wait(10)


def stored(questdb: QuestDB, table: str, symbol: str) -> list[int]:
    return questdb.trade_ids(table, symbol) if questdb.wal_applied(table) else []


def wait_stored(questdb: QuestDB, table: str, condition, what: str, timeout: float = 60.0) -> dict[str, list[int]]:
    """Poll until condition(ids by symbol) holds; returns the ids."""
    return questdb.wait_for(lambda: (ids := {s: stored(questdb, table, s) for s in SYMBOLS}) and condition(ids) and ids,
                            timeout, what)


def test_questdb_outage_longer_than_the_client_retry_window_loses_nothing_and_memory_stays_bounded(
        own_questdb, service, table_prefix):
    table = f"{table_prefix}trades"
    rate, seconds = 2000, 40  # trades per second per symbol; the stream ends after `seconds`
    with Simulator(["binance"], SYMBOLS, rate=rate, count=rate * seconds, seed=11) as sim:
        svc = service(sim)
        svc.start()
        wait_stored(own_questdb, table, lambda ids: all(len(v) > rate for v in ids.values()), "rows before the outage")
        process = psutil.Process(svc.process.pid)
        rss_before = process.memory_info().rss

        own_questdb.stop()
        outage_began = time.monotonic()
        rss_mid = rss_peak = spooled = 0
        # Hold the outage until 30 high-water marks' worth of rows have arrived and gone to disk. RSS is
        # compared from the 10th on: by then the spool's one-time costs (buffers, code paths) are paid.
        while spooled < 30 * HIGH_WATER_ROWS:
            assert time.monotonic() - outage_began < 60, f"rows are not reaching the spool ({spooled})"
            if rss_mid:
                rss_peak = max(rss_peak, process.memory_info().rss)
            elif spooled >= 10 * HIGH_WATER_ROWS:
                rss_mid = rss_peak = process.memory_info().rss
            spooled = svc.spooled_rows()
            time.sleep(0.05)
        own_questdb.start()
        outage_s = time.monotonic() - outage_began
        rss_peak = max(rss_peak, process.memory_info().rss)

        sim.wait_emitted(rate * seconds, timeout=60)
        expected = {s: sim.truth("binance", s) for s in SYMBOLS}

        def caught_up(ids: dict[str, list[int]]) -> bool:
            return all(ids[s] and ids[s] == expected[s][expected[s].index(ids[s][0]):]
                       and ids[s][-1] == expected[s][-1] for s in SYMBOLS)

        ids = wait_stored(own_questdb, table, caught_up, "the table to equal the ground truth")
    assert outage_s * 1000 > 5 * CLIENT_RETRY_MS
    print(f"outage {outage_s:.1f}s, spooled {spooled} rows, RSS {rss_before / 2**20:.1f} -> "
          f"{rss_mid / 2**20:.1f} -> peak {rss_peak / 2**20:.1f} MiB")
    for s in SYMBOLS:  # the service joined the stream within its first seconds: most of it is checked
        assert ids[s][0] - expected[s][0] < 5 * rate, s
    # 20 000+ rows (~150 bytes each as Python objects) passed through after the midpoint: held in
    # memory they would add 3+ MB at the very least; spooled, RSS stays near where it was.
    assert rss_peak - rss_mid < 3 * 2**20, (rss_before, rss_mid, rss_peak)
    assert svc.spooled_rows() == 0
    assert svc.stop() == 0


def test_sigkill_mid_stream_then_restart_loses_nothing_and_doubles_nothing(own_questdb, service, table_prefix):
    table = f"{table_prefix}trades"
    rate = 500
    with Simulator(["binance"], SYMBOLS, rate=rate, seed=12) as sim:
        svc = service(sim)
        svc.start()
        wait_stored(own_questdb, table, lambda ids: all(len(v) > rate for v in ids.values()), "rows before the kill")
        svc.process.send_signal(signal.SIGKILL)
        svc.process.wait(10)
        killed_at = sim.emitted("binance")
        sim.wait_emitted(killed_at + rate)  # a second of trades nobody receives
        svc.start()
        first = {s: sim.market("binance")[s].first_id for s in SYMBOLS}
        target = {s: first[s] + sim.emitted("binance") + rate for s in SYMBOLS}  # well after the restart
        ids = wait_stored(own_questdb, table,
                          lambda ids: all(ids[s] and ids[s][-1] >= target[s]
                                          and len(ids[s]) == ids[s][-1] - ids[s][0] + 1 for s in SYMBOLS),
                          "a contiguous history past the restart")
        assert svc.stop() == 0
    for s in SYMBOLS:
        assert len(ids[s]) == len(set(ids[s])), f"{s}: doubled ids"
        assert ids[s] == list(range(ids[s][0], ids[s][-1] + 1)), f"{s}: missing ids"
        assert ids[s][0] < first[s] + killed_at  # the history spans the kill
    assert "last_ids_recovered" in svc.log_text() and "backfill_done" in svc.log_text()


def test_sigkill_while_questdb_is_down_and_a_restart_while_it_still_is_lose_nothing(own_questdb, service,
                                                                                      table_prefix):
    """Where the stored history ends comes from the ledger, not QuestDB: the downtime is a gap all the same."""
    table = f"{table_prefix}trades"
    rate = 500
    with Simulator(["binance"], SYMBOLS, rate=rate, seed=13) as sim:
        svc = service(sim)
        svc.start()
        wait_stored(own_questdb, table, lambda ids: all(len(v) > rate for v in ids.values()), "rows before the outage")
        own_questdb.stop()
        try:
            spooled = svc.spooled_rows()
            own_questdb.wait_for(lambda: svc.spooled_rows() > spooled + rate, 30, "rows spooled during the outage")
            svc.process.send_signal(signal.SIGKILL)
            svc.process.wait(10)
            killed_at = sim.emitted("binance")
            sim.wait_emitted(killed_at + 2 * rate)  # two seconds of trades nobody receives
            svc.start()  # QuestDB is still down: only the ledger knows where the history ends
            restarted = svc.tmp / f"run-{svc.runs}.log"
            own_questdb.wait_for(lambda: '"gap_detected"' in restarted.read_text(errors="replace"), 60,
                                 "the downtime found as a gap")
        finally:
            own_questdb.start()
        first = {s: sim.market("binance")[s].first_id for s in SYMBOLS}
        target = {s: first[s] + sim.emitted("binance") + rate for s in SYMBOLS}
        ids = wait_stored(own_questdb, table,
                          lambda ids: all(ids[s] and ids[s][-1] >= target[s]
                                          and len(ids[s]) == ids[s][-1] - ids[s][0] + 1 for s in SYMBOLS),
                          "a contiguous history past the restart", timeout=90)
        assert svc.stop() == 0
    for s in SYMBOLS:
        assert ids[s] == list(range(ids[s][0], ids[s][-1] + 1)), f"{s}: missing ids"
        assert ids[s][0] < first[s] + killed_at  # the history spans the outage, the kill and the restart
    assert "last_ids_unavailable" in svc.log_text()  # the second start really found QuestDB down
