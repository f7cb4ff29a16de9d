"""The recovery ledger: what must survive a crash — the newest stored row of every series, every open gap.

`Ledger` is pure state (clock passed in): each operation changes it and returns the journal records that
say so, and `apply(record)` replays one, so the journal of any sequence of operations loads back into the
same ledger. `Journal` keeps it on local disk, crash-safe: an append-only file of framed records, fsynced;
a torn last record (SIGKILL mid-write) is detected, reported and cut off; a snapshot every `compact_every`
records (written, fsynced, renamed) keeps the file short. A crash between the snapshot's rename and the
journal's truncation replays records the snapshot already holds: marks and gaps come out the same (marks
never move back; a failed/close record only touches the gap opened when it was written; a closed gap is
listed once), only the counts of closed gaps count those twice.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson

from marketfeed.feeds.base import Gap
from marketfeed.storage.tables import TABLES

MIN_RETRY_S, MAX_RETRY_S = 5.0, 600.0  # a failed gap waits 5 s, then twice as long each time, at most 10 min
CLOSED_KEPT = 1000  # gaps given up on, kept for health and verify (the journal keeps them all)

Record = dict[str, object]


class Origin(enum.StrEnum):
    LIVE_ID_JUMP = "live_id_jump"
    CONNECTION_OUTAGE = "connection_outage"
    PROCESS_DOWNTIME = "process_downtime"
    STORED_HOLE = "stored_hole"  # ids missing between stored ones, found in QuestDB at start
    OPERATOR = "operator"  # marketfeed backfill, verify --repair
    HISTORY = "history"  # feeds.history: a stream with nothing stored starts with that much


class CloseReason(enum.StrEnum):
    FILLED = "filled"
    UNRECOVERABLE = "unrecoverable"  # the exchange cannot serve it (e.g. past its retention)
    EXPIRED = "expired"  # open longer than ledger.gap_max_age_h


@dataclass(frozen=True)
class Mark:
    """The newest row stored (written or spooled) of one series; key (table, exchange, symbol)."""

    table: str
    exchange: str
    symbol: str
    last_id: int | None  # trades of exchanges with trade ids; None for candles
    last_ts_ns: int


@dataclass(frozen=True)
class OpenGap:
    key: str
    feed: str
    gap: Gap  # what is still missing
    origin: Origin
    opened_at_ns: int
    attempts: int = 0
    next_attempt_ns: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class ClosedGap:
    gap: OpenGap
    reason: CloseReason
    detail: str
    closed_at_ns: int


@dataclass(frozen=True)
class LedgerStats:
    open_gaps: int
    oldest_open_age_s: float | None
    closed: dict[str, int]  # by CloseReason value


def gap_key(feed: str, gap: Gap) -> str:
    """Stable across restarts: the same missing range of the same stream is the same gap."""
    where = gap.stream or gap.symbol
    span = f"{gap.first_id}-{gap.last_id}" if not gap.since_ns else f"t{gap.since_ns}-{gap.until_ns}"
    return f"{feed}|{gap.table.name}|{where}|{span}"


def _gap_record(gap: Gap) -> dict[str, object]:
    fields = {f.name: getattr(gap, f.name) for f in dataclasses.fields(gap) if f.name != "table"}
    return {**fields, "table": gap.table.name}


def _gap_of(value: object) -> Gap:
    if not isinstance(value, dict):
        raise ValueError(f"not a gap: {value!r}")
    return Gap(**{**value, "table": TABLES[value["table"]]})


class Ledger:
    def __init__(self) -> None:
        self.marks: dict[tuple[str, str, str], Mark] = {}
        self.open: dict[str, OpenGap] = {}
        self.closed: deque[ClosedGap] = deque(maxlen=CLOSED_KEPT)  # not the filled ones
        self.closed_counts: dict[str, int] = {}

    # --- operations: each returns the records it implies
    def mark(self, marks: Iterable[Mark]) -> list[Record]:
        """Keep the highest id and the newest time per series; a mark never moves back."""
        records: list[Record] = []
        for mark in marks:
            key = (mark.table, mark.exchange, mark.symbol)
            held = self.marks.get(key)
            if held is not None:
                last_id = held.last_id if mark.last_id is None or (
                    held.last_id is not None and held.last_id >= mark.last_id) else mark.last_id
                mark = Mark(mark.table, mark.exchange, mark.symbol, last_id, max(held.last_ts_ns, mark.last_ts_ns))
                if mark == held:
                    continue
            self.marks[key] = mark
            records.append({"op": "mark", **dataclasses.asdict(mark)})
        return records

    def open_gap(self, feed: str, gap: Gap, origin: Origin, now_ns: int) -> tuple[OpenGap, list[Record]]:
        key = gap_key(feed, gap)
        if key in self.open:
            return self.open[key], []
        opened = OpenGap(key, feed, gap, origin, now_ns)
        self.open[key] = opened
        return opened, [{"op": "open", "key": key, "feed": feed, "gap": _gap_record(gap), "origin": origin.value,
                         "opened_at_ns": now_ns}]

    def failed(self, key: str, error: str, now_ns: int, retry_after_s: float = 0.0,
               left: Gap | None = None) -> list[Record]:
        held = self.open.get(key)
        if held is None:
            return []
        attempts = held.attempts + 1
        wait_s = max(retry_after_s, min(MAX_RETRY_S, MIN_RETRY_S * 2 ** (attempts - 1)))
        record: Record = {"op": "failed", "key": key, "opened_at_ns": held.opened_at_ns, "attempts": attempts,
                          "next_attempt_ns": now_ns + int(wait_s * 1e9), "last_error": error[:300],
                          "gap": _gap_record(left if left is not None else held.gap)}
        self.apply(record)
        return [record]

    def advance(self, key: str, left: Gap) -> list[Record]:
        """A page of the gap fetched and stored: `left` is what is still missing (no attempt counted)."""
        held = self.open.get(key)
        if held is None:
            return []
        record: Record = {"op": "advance", "key": key, "opened_at_ns": held.opened_at_ns, "gap": _gap_record(left)}
        self.apply(record)
        return [record]

    def close(self, key: str, reason: CloseReason, detail: str, now_ns: int) -> list[Record]:
        if key not in self.open:
            return []
        record: Record = {"op": "close", "key": key, "opened_at_ns": self.open[key].opened_at_ns,
                          "reason": reason.value, "detail": detail[:300], "closed_at_ns": now_ns}
        self.apply(record)
        return [record]

    def expire(self, now_ns: int, max_age_s: float) -> list[Record]:
        old = [key for key, g in self.open.items() if now_ns - g.opened_at_ns > max_age_s * 1e9]
        return [r for key in old for r in self.close(key, CloseReason.EXPIRED, f"open for more than {max_age_s:g} s",
                                                     now_ns)]

    # --- queries
    def due(self, feed: str, now_ns: int) -> list[OpenGap]:
        return [g for g in self.open.values() if g.feed == feed and g.next_attempt_ns <= now_ns]

    def feed_gaps(self, feed: str) -> list[OpenGap]:
        return [g for g in self.open.values() if g.feed == feed]

    def stats(self, now_ns: int) -> LedgerStats:
        oldest = min((g.opened_at_ns for g in self.open.values()), default=None)
        return LedgerStats(len(self.open), None if oldest is None else round((now_ns - oldest) / 1e9, 3),
                           dict(self.closed_counts))

    # --- replay
    def apply(self, record: Record) -> None:
        """One record into the state; applying it twice is applying it once."""
        op = record["op"]
        if op == "mark":
            mark = Mark(str(record["table"]), str(record["exchange"]), str(record["symbol"]),
                        _optional_int(record["last_id"]), _int(record["last_ts_ns"]))
            self.mark([mark])
        elif op == "open":
            key = str(record["key"])
            if key not in self.open:
                self.open[key] = OpenGap(key, str(record["feed"]), _gap_of(record["gap"]),
                                         Origin(str(record["origin"])), _int(record["opened_at_ns"]))
        elif op == "failed":
            held = self._target(record)
            if held is not None:
                self.open[held.key] = dataclasses.replace(
                    held, gap=_gap_of(record["gap"]), attempts=_int(record["attempts"]),
                    next_attempt_ns=_int(record["next_attempt_ns"]), last_error=str(record["last_error"]))
        elif op == "advance":
            held = self._target(record)
            if held is not None:
                self.open[held.key] = dataclasses.replace(held, gap=_gap_of(record["gap"]))
        elif op == "close":
            held = self._target(record)
            if held is not None:
                del self.open[held.key]
                reason = CloseReason(str(record["reason"]))
                self.closed_counts[reason.value] = self.closed_counts.get(reason.value, 0) + 1
                closed = ClosedGap(held, reason, str(record["detail"]), _int(record["closed_at_ns"]))
                if reason is not CloseReason.FILLED and closed not in self.closed:  # replayed twice: listed once
                    self.closed.append(closed)
        else:
            raise ValueError(f"unknown ledger record {op!r}")

    def _target(self, record: Record) -> OpenGap | None:
        """The open gap a failed/close record is about: its key, opened at the same time. An older journal
        replayed over a newer snapshot (a crash mid-compaction) then cannot touch a gap reopened since."""
        held = self.open.get(str(record["key"]))
        return held if held is not None and held.opened_at_ns == record.get("opened_at_ns") else None

    def snapshot(self) -> list[Record]:
        """Records that rebuild this state from nothing (the compacted journal)."""
        records: list[Record] = [{"op": "mark", **dataclasses.asdict(m)} for m in self.marks.values()]
        for g, closed in [*((c.gap, c) for c in self.closed), *((g, None) for g in self.open.values())]:
            # closed ones first (kept for health and verify): a gap reopened under the same key comes after
            records.append({"op": "open", "key": g.key, "feed": g.feed, "gap": _gap_record(g.gap),
                            "origin": g.origin.value, "opened_at_ns": g.opened_at_ns})
            if g.attempts:
                records.append({"op": "failed", "key": g.key, "opened_at_ns": g.opened_at_ns, "attempts": g.attempts,
                                "next_attempt_ns": g.next_attempt_ns, "last_error": g.last_error,
                                "gap": _gap_record(g.gap)})
            if closed is not None:
                records.append({"op": "close", "key": g.key, "opened_at_ns": g.opened_at_ns,
                                "reason": closed.reason.value, "detail": closed.detail,
                                "closed_at_ns": closed.closed_at_ns})
        records.append({"op": "counts", "closed": dict(self.closed_counts)})
        return records


def _int(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"not an integer: {value!r}")
    return value


def _optional_int(value: object) -> int | None:
    return None if value is None else _int(value)


class TornRecord(NamedTuple):
    offset: int  # byte offset of the record in its file
    reason: str


def _frame(record: Record) -> bytes:
    body = orjson.dumps(record)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _read(path: Path, ledger: Ledger, torn: list[TornRecord]) -> int:
    """Replay the records of one file; returns the length of its valid part (a torn tail is past it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    offset = valid = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        line = data[offset:] if end < 0 else data[offset:end]
        reason = ""
        if end < 0:
            reason = "no line end (torn write)"
        elif len(line) < 10 or line[8:9] != b" ":
            reason = "no frame"
        else:
            body = line[9:]
            try:
                if int(line[:8], 16) != zlib.crc32(body):
                    reason = "checksum mismatch"
                else:
                    record = orjson.loads(body)
                    counts = record.get("closed") if record.get("op") == "counts" else None
                    if isinstance(counts, dict):
                        ledger.closed_counts = {str(k): _int(v) for k, v in counts.items()}
                    else:
                        ledger.apply(record)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                reason = f"unreadable record: {exc}"
        if reason:
            torn.append(TornRecord(offset, reason))
        if end < 0:
            break
        offset = end + 1
        valid = offset
    return valid


class Journal:
    """<directory>/journal (append-only) and <directory>/snapshot."""

    def __init__(self, directory: str | Path, compact_every: int = 10_000):
        self.directory = Path(directory)
        self.compact_every = compact_every
        self.records_since_compact = 0
        self.good_size: int | None = None  # the journal's length after its last complete write (None: not read)

    @property
    def path(self) -> Path:
        return self.directory / "journal"

    @property
    def snapshot_path(self) -> Path:
        return self.directory / "snapshot"

    def load(self, repair: bool = True) -> tuple[Ledger, list[TornRecord]]:
        """The state on disk. `repair` (the service at start): cut a torn tail, remove a compaction's leftover;
        without it (`marketfeed verify`, while the service may be writing) nothing is changed."""
        ledger, torn = Ledger(), list[TornRecord]()
        _read(self.snapshot_path, ledger, torn)
        valid = _read(self.path, ledger, torn)
        if not repair:
            return ledger, torn
        if self.path.exists() and self.path.stat().st_size > valid:
            with open(self.path, "r+b") as f:  # cut a torn tail: later appends start on a line of their own
                f.truncate(valid)
                os.fsync(f.fileno())
        (self.directory / "snapshot.tmp").unlink(missing_ok=True)  # a compaction that did not finish
        self.records_since_compact = 0
        self.good_size = valid
        return ledger, torn

    def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self._fsync_dir()
        with open(self.path, "ab") as f:
            if self.good_size is not None and f.tell() != self.good_size:
                f.truncate(self.good_size)  # a write that failed part-way: its half record would swallow the next
            f.write(b"".join(_frame(r) for r in records))
            f.flush()
            os.fsync(f.fileno())
            self.good_size = f.tell()
        self.records_since_compact += len(records)

    def compact(self, ledger: Ledger) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "snapshot.tmp"
        with open(tmp, "wb") as f:
            f.write(b"".join(_frame(r) for r in ledger.snapshot()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        self._fsync_dir()
        with open(self.path, "wb") as f:  # crash before this: the old journal replays idempotently over the snapshot
            os.fsync(f.fileno())
        self.records_since_compact, self.good_size = 0, 0

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class GapRequest(NamedTuple):
    path: Path
    feed: str
    origin: Origin
    gaps: list[Gap]


class UnreadableRequest(NamedTuple):
    path: Path
    error: str


class RequestBox:
    """<ledger dir>/requests/<feed>/: gaps handed to the service's ledger from outside (`marketfeed verify --repair`)
    while it may be running. One file per request, written whole (write, fsync, rename); the feed it names opens
    them at its next tick, and the ledger writer removes the file once their records are on disk, so a kill in
    between only hands them over again (opening a gap that is open already changes nothing)."""

    def __init__(self, ledger_dir: str | Path):
        self.directory = Path(ledger_dir) / "requests"

    def feed_dir(self, feed: str) -> Path:
        return self.directory / "".join(c if c.isalnum() or c in "-_." else "_" for c in feed)

    def put(self, feed: str, gaps: Sequence[Gap], origin: Origin) -> Path:
        directory = self.feed_dir(feed)
        directory.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({"feed": feed, "origin": origin.value, "gaps": [_gap_record(g) for g in gaps]})
        path = directory / f"{time.time_ns()}-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def pending(self, feed: str) -> list[GapRequest | UnreadableRequest]:
        """This feed's requests, oldest first, and the files that cannot be read as one."""
        try:
            paths = sorted(self.feed_dir(feed).glob("*.json"))
        except OSError as exc:
            return [UnreadableRequest(self.feed_dir(feed), str(exc))]
        found: list[GapRequest | UnreadableRequest] = []
        for path in paths:
            try:
                body = orjson.loads(path.read_bytes())
                gaps = [_gap_of(g) for g in body["gaps"]]
                found.append(GapRequest(path, str(body["feed"]), Origin(body["origin"]), gaps))
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                found.append(UnreadableRequest(path, f"{type(exc).__name__}: {exc}"))
        return found
