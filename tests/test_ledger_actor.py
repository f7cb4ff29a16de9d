"""The ledger actor's writer thread: batched, fsynced appends; marks coalesced off the hot path; a write error
counted, logged and survived."""
import logging
import os
from pathlib import Path

import pytest

from marketfeed.actors.ledger import LedgerActor, LedgerOutlet, LedgerRecords, MarkRows
from marketfeed.feeds.base import Gap
from marketfeed.storage.ledger import Journal, Ledger, Mark, Origin
from marketfeed.supervision.supervisor import GetStatus
from tests.support.polling import poll

S = 10**9
T0 = 1_700_000_000 * S


def opened(ledger: Ledger, n: int) -> LedgerRecords:
    _, records = ledger.open_gap("f", Gap("BTCUSDT", n * 10, n * 10 + 5, stream="BTCUSDT"), Origin.LIVE_ID_JUMP, T0)
    return LedgerRecords(tuple(records))


def lines(path: Path) -> list[bytes]:
    """The complete records on disk, read without Journal.load (which would cut a tail the writer is writing)."""
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1].splitlines()


@pytest.fixture
def start(tmp_path):
    refs = []

    def start(directory: Path = tmp_path / "ledger"):
        journal = Journal(directory)
        ref = LedgerActor.start(None, journal, Ledger(), LedgerOutlet())
        refs.append(ref)
        return ref, journal

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop()


def test_records_told_together_reach_the_disk_in_few_fsynced_writes(start, monkeypatch):
    ref, journal = start()
    synced: list[tuple[str, int]] = []  # (file, its size when fsynced)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    source = Ledger()
    for n in range(10):
        ref.tell(opened(source, n))
    poll(lambda: len(lines(journal.path)) == 10, 10, "ten records journaled")
    journal_syncs = [size for name, size in synced if name == str(journal.path)]
    assert 0 < len(journal_syncs) < 10  # batched: not one write + fsync per message
    assert journal_syncs[-1] == journal.path.stat().st_size  # every byte written was fsynced
    ref.stop()
    assert Journal(journal.directory).load()[0].open == source.open


def test_marks_are_coalesced_and_the_newest_is_journaled_by_an_orderly_stop(start):
    ref, journal = start()
    for n in range(1, 201):
        ref.tell(MarkRows((Mark("trades", "binance", "BTCUSDT", n, T0 + n),)))
    ref.stop()
    loaded, torn = Journal(journal.directory).load()
    assert torn == []
    assert loaded.marks[("trades", "binance", "BTCUSDT")] == Mark("trades", "binance", "BTCUSDT", 200, T0 + 200)
    assert len(lines(journal.path)) < 20  # 200 marks of one series, a handful of records


def test_a_write_error_is_counted_and_logged_and_the_actor_lives_on(start, tmp_path, caplog):
    directory = tmp_path / "ledger"
    directory.write_bytes(b"")  # a file where the directory should be: every append fails (root ignores chmod)
    ref, journal = start(directory)
    source = Ledger()
    with caplog.at_level(logging.ERROR, logger="marketfeed.ledger"):
        ref.tell(opened(source, 1))
        status = poll(lambda: (s := ref.ask(GetStatus(), timeout=5))["write_failures"] and s, 10, "a write failure")
    assert status["write_failures"] == 1 and status["last_error"]
    assert "ledger_write_failed" in caplog.messages
    directory.unlink()  # the disk is usable again
    ref.tell(opened(source, 2))
    poll(lambda: lines(journal.path), 10, "a record journaled after the error")
    assert ref.is_alive()
