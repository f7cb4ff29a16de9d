"""Supervision end to end, with the real `marketfeed run` process: give-up → exit 1, SIGTERM → exit 0, nothing lost."""
import signal

import orjson

from tests.support.questdb import free_port
from tests.support.service import sim_feed

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def test_feed_failing_every_connect_makes_the_root_give_up_and_the_process_exit_1(service):
    dead = sim_feed("binance", None, SYMBOLS, name="dead", url=f"ws://127.0.0.1:{free_port()}",  # nothing listens
                    max_connect_failures=2, reconnect_min_s=0.01, reconnect_max_s=0.02, backfill=False)
    proc = service([dead], supervisor={"max_restarts": 2, "within_s": 60, "min_backoff_s": 0.01, "max_backoff_s": 0.05})
    assert proc.wait(60) == 1, proc.tail()
    # Intensity 2: the feed supervisor restarts its feed twice and gives up at the third failure; the root
    # restarts the feed supervisor twice and gives up at its third give-up.
    give_ups = [(e["supervisor"], e["child"]) for e in proc.events("supervisor_give_up")]
    assert give_ups == [("feeds", "dead")] * 3 + [("root", "feeds")]  # a feed by its configured name
    restarts = [(e["supervisor"], e["child"]) for e in proc.events("child_restarted")]
    assert restarts.count(("feeds", "dead")) == 6 and restarts.count(("root", "feeds")) == 2
    assert all("connects in a row failed" in e["error"] for e in proc.events("child_exited")
               if e["child"] == "dead")
    assert len(proc.events("service_give_up")) == 1
    assert proc.events("service_stopped")[-1]["exit_code"] == 1


def test_sigterm_mid_stream_exits_0_with_every_received_row_in_questdb(service, tmp_path, questdb, table_prefix):
    sim = service.simulator(["binance"], SYMBOLS, rate=300, seed=11)
    # Buffers would only flush after 30 s: every row in QuestDB below got there through the shutdown flush.
    proc = service([sim_feed("binance", sim, SYMBOLS, name="binance-spot")],
                   sink={"max_rows": 1_000_000, "flush_interval_s": 30.0})
    connection = sim.wait_connections("binance", 1, timeout=30)[0]
    sim.wait_until(lambda: connection.counters.trades_sent >= 300, 30, "trades streaming")

    proc.signal(signal.SIGUSR2)  # every thread's stack into the log; the process carries on
    stacks = proc.wait_event("thread_stack", timeout=10, where=lambda e: e["thread"] == "MainThread")
    assert "dump_thread_stacks" in stacks["stack"]
    proc.wait_event("thread_stack", timeout=10, where=lambda e: e["thread"].startswith("reader-"))
    assert proc.proc.poll() is None

    status_file = tmp_path / "status.json"  # a report gathered from the running actors exists
    sim.wait_until(lambda: status_file.exists() and orjson.loads(status_file.read_bytes())["feeds"], 30,
                   "a report with the feed in it")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0, proc.tail()
    truth = {s: sim.truth("binance", s) for s in SYMBOLS}

    received = proc.events("feed_stopped")[-1]["data_messages"]
    assert received >= 300
    table = f"{table_prefix}trades"
    questdb.wait_for(lambda: questdb.wal_applied(table), what="WAL applied")
    stored = {s: questdb.trade_ids(table, s) for s in SYMBOLS}
    assert sum(len(ids) for ids in stored.values()) == received
    for symbol, ids in stored.items():  # the live stream from our subscription on, without a gap
        start = truth[symbol].index(ids[0])
        assert ids == truth[symbol][start:start + len(ids)]
    # Shutdown order: feeds stop reading, then buffers flush, then health writes its final report.
    order = [line["event"] for line in proc.lines
             if line.get("event") in ("feed_stopped", "buffer_stopped")
             or (line.get("event") == "health_report" and line.get("reason") == "shutdown")]
    assert order[0] == "feed_stopped" and order[-1] == "health_report"
    assert order.count("buffer_stopped") == 2 and order.count("health_report") == 1
    # The final report carries the actors as last gathered, dated, besides the process.
    final = proc.events("health_report")[-1]
    assert final["actors_as_of"] <= final["generated_at"] and final["process"]["rss_bytes"] > 0
    assert final["feeds"]["binance-spot"]["data_messages"] >= 300 and "trades" in final["buffers"]
