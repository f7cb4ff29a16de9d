"""The recovery ledger: pure operations with a clock passed in, and a journal that survives a kill at any byte."""
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketfeed.feeds.base import Gap
from marketfeed.storage.ledger import (
    MAX_RETRY_S,
    MIN_RETRY_S,
    CloseReason,
    GapRequest,
    Journal,
    Ledger,
    Mark,
    Origin,
    RequestBox,
    UnreadableRequest,
    gap_key,
)
from marketfeed.storage.tables import CANDLES

S = 10**9
T0 = 1_700_000_000 * S


def gap(first=10, last=20, symbol="BTCUSDT") -> Gap:
    return Gap(symbol, first, last, stream=symbol)


def state(ledger: Ledger) -> tuple:
    return (ledger.marks, ledger.open, list(ledger.closed), ledger.closed_counts)


def test_marks_keep_the_highest_id_and_the_newest_time_and_never_move_back():
    ledger = Ledger()
    assert len(ledger.mark([Mark("trades", "binance", "BTCUSDT", 5, T0)])) == 1
    assert ledger.mark([Mark("trades", "binance", "BTCUSDT", 4, T0 - S)]) == []  # older: nothing changes
    ledger.mark([Mark("trades", "binance", "BTCUSDT", 7, T0 - S)])
    assert ledger.marks[("trades", "binance", "BTCUSDT")] == Mark("trades", "binance", "BTCUSDT", 7, T0)
    ledger.mark([Mark("candles", "binance", "BTCUSDT", None, T0 + S)])
    assert ledger.marks[("candles", "binance", "BTCUSDT")].last_id is None


def test_a_gap_opens_once_and_a_failure_backs_off_doubling_to_the_cap_never_before_retry_after():
    ledger = Ledger()
    opened, records = ledger.open_gap("f", gap(), Origin.LIVE_ID_JUMP, T0)
    assert opened.key == gap_key("f", gap()) and len(records) == 1
    assert ledger.open_gap("f", gap(), Origin.LIVE_ID_JUMP, T0 + S) == (opened, [])
    assert ledger.due("f", T0) == [opened] and ledger.due("other", T0) == []
    waits = []
    for _ in range(9):
        ledger.failed(opened.key, "HTTP 503", T0, left=gap(15, 20))
        waits.append((ledger.open[opened.key].next_attempt_ns - T0) / S)
    assert waits[:3] == [MIN_RETRY_S, 2 * MIN_RETRY_S, 4 * MIN_RETRY_S] and waits[-1] == MAX_RETRY_S
    held = ledger.open[opened.key]
    assert held.gap == gap(15, 20) and held.attempts == 9 and held.key == opened.key  # what is left, same key
    ledger.failed(opened.key, "429", T0, retry_after_s=1200.0)
    assert ledger.open[opened.key].next_attempt_ns == T0 + 1200 * S
    assert ledger.due("f", T0 + 1199 * S) == [] and ledger.due("f", T0 + 1200 * S) != []


def test_closing_keeps_what_was_given_up_on_for_health_and_verify():
    ledger = Ledger()
    filled, _ = ledger.open_gap("f", gap(1, 2), Origin.LIVE_ID_JUMP, T0)
    lost, _ = ledger.open_gap("f", gap(5, 6), Origin.PROCESS_DOWNTIME, T0)
    ledger.close(filled.key, CloseReason.FILLED, "", T0 + S)
    ledger.close(lost.key, CloseReason.UNRECOVERABLE, "past the retention", T0 + S)
    assert ledger.close("nope", CloseReason.FILLED, "", T0) == []
    assert [c.gap.key for c in ledger.closed] == [lost.key] and ledger.open == {}
    assert ledger.stats(T0).closed == {"filled": 1, "unrecoverable": 1}


def test_expiry_and_stats():
    ledger = Ledger()
    ledger.open_gap("f", gap(1, 2), Origin.LIVE_ID_JUMP, T0)
    young, _ = ledger.open_gap("f", gap(3, 4), Origin.LIVE_ID_JUMP, T0 + 50 * S)
    assert ledger.stats(T0 + 100 * S).oldest_open_age_s == 100.0
    assert len(ledger.expire(T0 + 100 * S, 60.0)) == 1
    assert list(ledger.open) == [young.key] and ledger.closed[0].reason is CloseReason.EXPIRED
    assert Ledger().stats(T0).oldest_open_age_s is None


def some_operations(ledger: Ledger) -> list:
    records = ledger.mark([Mark("trades", "binance", "BTCUSDT", 9, T0), Mark("candles", "kraken", "BTC/USD", None, T0)])
    a, r = ledger.open_gap("f", gap(), Origin.CONNECTION_OUTAGE, T0)
    records += r
    b, r = ledger.open_gap("k", Gap("BTC/USD", since_ns=T0, until_ns=T0 + S, stream="BTC/USD@ohlc-1", table=CANDLES),
                           Origin.PROCESS_DOWNTIME, T0)
    records += r
    records += ledger.failed(a.key, "boom", T0, 3.0, gap(12, 20))
    records += ledger.close(b.key, CloseReason.UNRECOVERABLE, "720 candles", T0 + S)
    return records


def test_the_journal_loads_back_what_was_appended(tmp_path):
    ledger, journal = Ledger(), Journal(tmp_path / "ledger")
    journal.append(some_operations(ledger))
    loaded, torn = Journal(tmp_path / "ledger").load()
    assert torn == [] and state(loaded) == state(ledger)
    assert loaded.closed[0].gap.gap.table is CANDLES


def test_a_kill_at_any_byte_of_the_last_record_loses_that_record_only(tmp_path):
    ledger, journal = Ledger(), Journal(tmp_path)
    records = some_operations(ledger)
    journal.append(records[:-1])
    whole = journal.path.read_bytes()
    journal.append(records[-1:])
    full = journal.path.read_bytes()
    before = Ledger()
    for record in records[:-1]:
        before.apply(record)
    for cut in range(len(whole), len(full)):
        journal.path.write_bytes(full[:cut])
        loaded, torn = Journal(tmp_path).load()
        assert state(loaded) == state(before), cut
        assert len(torn) == (0 if cut == len(whole) else 1), cut
        assert journal.path.read_bytes() == whole  # the torn tail is cut off: the next append starts clean
    Journal(tmp_path).append(records[-1:])
    assert state(Journal(tmp_path).load()[0]) == state(ledger)


def test_a_corrupt_record_in_the_middle_is_skipped_and_reported(tmp_path):
    ledger, journal = Ledger(), Journal(tmp_path)
    journal.append(some_operations(ledger))
    lines = journal.path.read_bytes().split(b"\n")
    lines[0] = lines[0][:-3] + b"xyz"  # the first mark, corrupted
    journal.path.write_bytes(b"\n".join(lines))
    loaded, torn = journal.load()
    assert [t.reason for t in torn] == ["checksum mismatch"] and set(loaded.open) == set(ledger.open)


def test_compaction_keeps_the_state_and_a_crash_in_it_loses_nothing(tmp_path):
    ledger, journal = Ledger(), Journal(tmp_path, compact_every=100)
    journal.append(some_operations(ledger))
    old_journal = journal.path.read_bytes()
    journal.compact(ledger)
    assert journal.path.read_bytes() == b""
    more = ledger.mark([Mark("trades", "binance", "BTCUSDT", 11, T0 + S)])
    journal.append(more)
    assert state(Journal(tmp_path).load()[0]) == state(ledger)
    # A crash after the snapshot's rename, before the journal was emptied: the old records replay over it.
    journal.path.write_bytes(old_journal + journal.path.read_bytes())
    loaded = Journal(tmp_path).load()[0]
    assert (loaded.marks, loaded.open) == (ledger.marks, ledger.open)
    # A crash while the snapshot was written: the temporary file is ignored and removed.
    (tmp_path / "snapshot.tmp").write_bytes(b"half a snap")
    assert state(Journal(tmp_path).load()[0])[:2] == state(ledger)[:2] and not (tmp_path / "snapshot.tmp").exists()


operations = st.lists(st.tuples(st.sampled_from(["mark", "open", "fail", "close", "expire"]),
                                st.integers(0, 3), st.integers(0, 50)), max_size=30)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_loading_the_journal_of_any_operations_gives_the_ledger_that_made_it(tmp_path, ops):
    ledger, directory = Ledger(), tmp_path / str(abs(hash(tuple(ops))))
    journal, records = Journal(directory), []
    for op, n, t in ops:
        now = T0 + t * S
        if op == "mark":
            records += ledger.mark([Mark("trades", "binance", f"S{n}", t, now)])
        elif op == "open":
            records += ledger.open_gap("f", gap(n * 10, n * 10 + 5), Origin.LIVE_ID_JUMP, now)[1]
        elif op == "fail":
            records += ledger.failed(gap_key("f", gap(n * 10, n * 10 + 5)), "e", now, t / 10, gap(n * 10 + 1, 99))
        elif op == "close":
            records += ledger.close(gap_key("f", gap(n * 10, n * 10 + 5)), list(CloseReason)[n % 3], "", now)
        else:
            records += ledger.expire(now, 10.0)
    journal.append(records)
    assert state(Journal(directory).load()[0]) == state(ledger)
    journal.compact(ledger)
    assert state(Journal(directory).load()[0]) == state(ledger)
    assert sorted(os.listdir(directory)) == ["journal", "snapshot"]


def test_a_write_that_failed_part_way_does_not_swallow_the_next_record(tmp_path):
    ledger, journal = Ledger(), Journal(tmp_path)
    journal.load()
    records = some_operations(ledger)
    journal.append(records[:2])
    with open(journal.path, "ab") as f:  # what a write cut short (disk full) leaves behind
        f.write(b"0123abcd {\"op\":\"mar")
    journal.append(records[2:])
    loaded, torn = Journal(tmp_path).load()
    assert torn == [] and state(loaded) == state(ledger)


def test_an_old_journal_replayed_over_a_newer_snapshot_cannot_close_a_gap_reopened_since(tmp_path):
    ledger, journal = Ledger(), Journal(tmp_path)
    first, records = ledger.open_gap("f", gap(), Origin.LIVE_ID_JUMP, T0)
    records += ledger.close(first.key, CloseReason.UNRECOVERABLE, "gone", T0 + S)
    again, more = ledger.open_gap("f", gap(), Origin.LIVE_ID_JUMP, T0 + 2 * S)  # the same hole found again
    journal.append(records + more)
    old_journal = journal.path.read_bytes()
    journal.compact(ledger)
    journal.path.write_bytes(old_journal)  # a crash after the snapshot's rename, before the journal was emptied
    loaded = Journal(tmp_path).load()[0]
    assert loaded.open == {again.key: again} and again.key == first.key
    assert [c.gap.opened_at_ns for c in loaded.closed] == [T0]


def test_an_advanced_gap_resumes_from_what_is_left_after_a_reload_and_a_compaction(tmp_path):
    journal, ledger = Journal(tmp_path), Ledger()
    opened, records = ledger.open_gap("f", Gap("BTCUSDT", since_ns=10, until_ns=90, stream="BTCUSDT"),
                                      Origin.OPERATOR, 1)
    journal.append(records)
    left = Gap("BTCUSDT", 5000, until_ns=90, stream="BTCUSDT")
    journal.append(ledger.advance(opened.key, left))
    loaded, _ = Journal(tmp_path).load()
    assert loaded.open[opened.key].gap == left and loaded.open[opened.key].attempts == 0  # no attempt counted
    journal.compact(loaded)
    assert Journal(tmp_path).load()[0].open[opened.key].gap == left
    assert ledger.advance("no such gap", left) == []


def test_a_request_file_hands_its_gaps_over_and_an_unreadable_one_is_reported_not_lost(tmp_path):
    box = RequestBox(tmp_path)
    gaps = [Gap("BTC/USD", 10, 20, since_ns=5, stream="BTC/USD"), Gap("ETH/USD", 7, 9, stream="ETH/USD")]
    path = box.put("kraken main", gaps, Origin.STORED_HOLE)
    assert path.parent == tmp_path / "requests" / "kraken_main" and not list(path.parent.glob("*.tmp"))
    (path.parent / "0-garbage.json").write_bytes(b'{"feed": "kraken main", "gaps": [{"symbol": 1')
    unreadable, request = box.pending("kraken main")
    assert isinstance(unreadable, UnreadableRequest) and unreadable.path.name == "0-garbage.json"
    assert request == GapRequest(path, "kraken main", Origin.STORED_HOLE, gaps)
    assert box.pending("another feed") == []
