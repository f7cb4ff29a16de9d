"""End to end, REST failing for a while during a gap: the gap stays open in the ledger, is asked again within what
the exchange demands (Retry-After, Kraken's rate-limit pause, the ledger's own wait) and is filled once REST
recovers, so the stored ids equal the truth exactly.

A live id jump (trades skipped on the WebSocket) opens one gap; its REST requests are the only ones of the test
(a fresh service has no last ids: no look past them at connect), so the simulator's REST log is that gap's. Each
fault outlasts the client's attempts at one page (RestLimits.attempts), so the gap's first attempt ends failed and
only the ledger's retry (storage/ledger.py, MIN_RETRY_S) can fill it.
"""
from functools import partial
from itertools import pairwise
from pathlib import Path

from marketfeed.actors.rest_client import RestLimits
from marketfeed.feeds.kraken import KrakenProtocol
from marketfeed.sim.server import RestLogEntry
from marketfeed.storage.ledger import MIN_RETRY_S, Journal, OpenGap
from tests.support.polling import poll
from tests.support.service import ServiceProcess, sim_feed
from tests.support.truth import assert_trade_ids, truth

ATTEMPTS = RestLimits().attempts  # requests at one page before the client reports it failed
CLOCK_TOLERANCE_S = 0.05  # the simulator logs arrivals on its monotonic clock, the client waits on the wall clock
SKIPPED = 25  # trades lost on the WebSocket: the live id jump
# The market ends before the gap is filled; no stale reconnect meanwhile (it would ask REST past the last id).
feed = partial(sim_feed, stale_after_s=120.0)


def open_gap(proc: ServiceProcess) -> dict:
    """The live id jump's gap_detected line."""
    return proc.wait_event("gap_detected", timeout=30, where=lambda e: e["origin"] == "live_id_jump")


def same_gap(gap: dict):
    return lambda e: (e["first_id"], e["last_id"]) == (gap["first_id"], gap["last_id"])


def filled(proc: ServiceProcess, gap: dict, timeout: float = 45.0) -> dict:
    """The backfill_done line that fills `gap`, after one that failed it."""
    failed = proc.wait_event("backfill_done", timeout=30, where=lambda e: same_gap(gap)(e) and bool(e["error"]))
    done = proc.wait_event("backfill_done", timeout=timeout, where=lambda e: same_gap(gap)(e) and not e["error"])
    assert proc.events("backfill_done").index(failed) < proc.events("backfill_done").index(done)
    assert done["rows"] == gap["missing"]
    return failed


def waiting_in_ledger(tmp_path: Path, attempts: int) -> OpenGap:
    """The one gap the journal keeps open after `attempts` failed attempts, read as `marketfeed verify` reads it."""
    def failed() -> OpenGap | None:
        gaps = list(Journal(tmp_path / "ledger").load(repair=False)[0].open.values())
        return gaps[0] if len(gaps) == 1 and gaps[0].attempts == attempts else None

    return poll(failed, 30, f"the gap journaled failed {attempts} times")


def assert_closed_filled(tmp_path: Path) -> None:
    ledger = Journal(tmp_path / "ledger").load(repair=False)[0]
    assert not ledger.open and ledger.closed_counts == {"filled": 1}


def waits(log: list[RestLogEntry]) -> list[float]:
    """Seconds between each request's arrival and the next one's."""
    return [round(later.time - earlier.time, 3) for earlier, later in pairwise(log)]


def test_binance_429_retry_after_is_waited_out_every_time_and_the_gap_fills(service, questdb, table_prefix, tmp_path):
    retry_after_s = 2
    sim = service.simulator(["binance"], ["BTCUSDT"], rate=200, count=1000, seed=41, clock_paused=True)
    proc = service([feed("binance", sim, ["BTCUSDT"])])
    connection = sim.wait_connections("binance", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(100)
    sim.rest_throttle("binance", ATTEMPTS + 1, retry_after_s)  # the first attempt, and the ledger's retry's first page
    connection.skip_next(SKIPPED, "BTCUSDT")
    gap = open_gap(proc)
    failed = filled(proc, gap)
    assert "HTTP 429" in failed["error"] and failed["retry_after_s"], failed  # the delay reaches the ledger
    sim.wait_emitted(1000, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", ["BTCUSDT"]), exchange="binance",
                     log=proc)

    log = sim.rest_log("binance")
    assert [e.status for e in log] == [429] * (ATTEMPTS + 1) + [200], log
    assert all(e.path == "/api/v3/historicalTrades" and e.query["fromId"] == str(gap["first_id"]) for e in log)
    measured = waits(log)
    print(f"waits after each 429 (Retry-After {retry_after_s} s): {measured}")
    # The host is held for Retry-After after every 429, the client's own retries and the ledger's alike: a client
    # that asked sooner would be "failing to back off after receiving 429s", which Binance bans for (418).
    assert all(wait >= retry_after_s - CLOCK_TOLERANCE_S for wait in measured), measured
    # Within the client, not pointlessly later; the ledger's retry after its first wait, at the next tick.
    assert all(wait < retry_after_s + 1.5 for wait in measured[:ATTEMPTS - 1] + measured[ATTEMPTS:]), measured
    assert MIN_RETRY_S - CLOCK_TOLERANCE_S <= measured[ATTEMPTS - 1] < MIN_RETRY_S + 2.5, measured
    assert_closed_filled(tmp_path)
    assert proc.stop() == 0


def test_server_errors_past_the_clients_retries_leave_the_gap_to_the_ledger_which_retries_5_then_10_s_later(
        service, questdb, table_prefix, tmp_path):
    sim = service.simulator(["binance"], ["BTCUSDT"], rate=200, count=1000, seed=42, clock_paused=True)
    proc = service([feed("binance", sim, ["BTCUSDT"])])
    connection = sim.wait_connections("binance", 1, timeout=30)[0]
    sim.start_clock()
    sim.wait_emitted(100)
    retry_after_s = 1  # RFC 9110: how long a 503 expects the service to be unavailable
    sim.rest_errors("binance", 2 * ATTEMPTS, 503, retry_after_s)  # two attempts at the gap, every request of each
    connection.skip_next(SKIPPED, "BTCUSDT")
    gap = open_gap(proc)
    held = waiting_in_ledger(tmp_path, 1)
    assert (held.gap.first_id, held.gap.last_id) == (gap["first_id"], gap["last_id"])  # what is left: all of it
    assert "HTTP 503" in held.last_error
    waiting_in_ledger(tmp_path, 2)
    filled(proc, gap)
    failures = [e for e in proc.events("backfill_done") if same_gap(gap)(e) and e["error"]]
    assert len(failures) == 2 and all("HTTP 503" in e["error"] for e in failures), failures
    assert len(proc.events("rest_retry")) == 2 * (ATTEMPTS - 1)  # the client's retries within each attempt
    sim.wait_emitted(1000, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "binance", ["BTCUSDT"]), exchange="binance",
                     log=proc)

    log = sim.rest_log("binance")
    assert [e.status for e in log] == [503] * 2 * ATTEMPTS + [200], log
    measured = waits(log)
    print(f"waits after each 503 (Retry-After {retry_after_s} s): {measured}")
    assert all(wait >= retry_after_s - CLOCK_TOLERANCE_S for wait in measured), measured
    # The ledger's retries, not the client's: 5 s after the first failed attempt, twice that after the second.
    first, second = measured[ATTEMPTS - 1], measured[2 * ATTEMPTS - 1]
    assert MIN_RETRY_S - CLOCK_TOLERANCE_S <= first < MIN_RETRY_S + 2.5, measured
    assert 2 * MIN_RETRY_S - CLOCK_TOLERANCE_S <= second < 2 * MIN_RETRY_S + 2.5, measured
    assert_closed_filled(tmp_path)
    assert proc.stop() == 0


def test_kraken_rate_limit_error_array_with_http_200_is_waited_out_and_the_gap_fills(
        service, questdb, table_prefix, tmp_path):
    symbols = ["BTC/USD"]
    sim = service.simulator(["kraken"], {"kraken": symbols}, rate=200, count=1000, seed=43, clock_paused=True)
    proc = service([feed("kraken", sim, symbols)])
    connection = sim.wait_connections("kraken", 1, timeout=30)[0]
    proc.wait_event("feed_connected")
    sim.start_clock()
    sim.wait_emitted(100)
    sim.rest_throttle("kraken", ATTEMPTS)  # {"error": ["EAPI:Rate limit exceeded"]} with HTTP 200
    connection.skip_next(SKIPPED, "BTC/USD")
    gap = open_gap(proc)
    assert "EAPI:Rate limit exceeded" in waiting_in_ledger(tmp_path, 1).last_error
    failed = filled(proc, gap)
    assert "EAPI:Rate limit exceeded" in failed["error"]
    sim.wait_emitted(1000, timeout=30)
    assert_trade_ids(questdb, f"{table_prefix}trades", truth(sim, "kraken", symbols), log=proc)

    log = sim.rest_log("kraken")
    assert [e.status for e in log] == [200] * (ATTEMPTS + 1), log  # Kraken says it in the body, not the status
    assert all(e.path == "/0/public/Trades" for e in log)
    measured = waits(log)
    print(f"waits after each rate-limit answer (Kraken names no delay; ours {KrakenProtocol.rest_limited_wait_s} s): "
          f"{measured}")
    # "additional calls will be restricted for a few seconds (or possibly longer if calls continue to be made)"
    assert all(wait >= KrakenProtocol.rest_limited_wait_s - CLOCK_TOLERANCE_S for wait in measured), measured
    assert measured[-1] >= MIN_RETRY_S - CLOCK_TOLERANCE_S, measured  # the ledger's retry
    assert_closed_filled(tmp_path)
    assert proc.stop() == 0
