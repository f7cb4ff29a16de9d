"""The feed pipeline: what happens to parsed rows before they are stored. Pure: no threads, no I/O, clocks passed in.

live burst:  validate → outage window → dedup → sequence → candles → rows per table + gaps
REST page:   validate → (trades) sequence fill → dedup        → rows per table

The feed actor applies the result: it sends the rows to the buffer actors, the gaps to the backfiller,
the counts to metrics and the rejected samples to the dead-letter file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import FeedProtocol, Gap, ParsedRows
from marketfeed.feeds.dedup import DedupWindow
from marketfeed.feeds.rows import Candle, Row
from marketfeed.feeds.sequence import SequenceTracker
from marketfeed.feeds.validation import IMPLAUSIBLE_ID, RowValidator, SampleGate, Subscribed, sample_row
from marketfeed.storage.deadletter import Record
from marketfeed.storage.ledger import Ledger
from marketfeed.storage.tables import CANDLES, TRADES, Table

REJECT_SAMPLE_INTERVAL_S = 60.0  # one dead-letter sample per rejection reason per minute


class FeedMemory:
    """What a feed knows that outlives one actor incarnation: the last trade id (and its event time) per
    stream, the event time of the newest trade or candle seen (where an outage window starts; at process
    start, the newest stored one), holes found at start."""

    def __init__(self) -> None:
        self.last_ids: dict[str, int] = {}
        self.last_ts: dict[str, int] = {}  # event time of each stream's last id: where REST finds a gap by time
        self.stream_symbols: dict[str, str] = {}  # stream keys that are more than a symbol → their symbol
        self.last_event_ns = 0
        self.stored_holes: list[Gap] = []  # found in QuestDB at start; the first incarnation backfills them
        # The ledger's marks at start, (table, exchange, symbol) → newest stored event time: the downtime window of
        # each table starts where that table's rows end. Used by the first window after the start, then dropped.
        self.stored_ns: dict[tuple[str, str, str], int] = {}
        self.history: list[Gap] = []  # feeds.history of the symbols with nothing stored; fetched like them
        self.gaps = Ledger()  # this feed's open gaps (the recovery ledger's, at start): retried until closed


@dataclass
class OutageWindow:
    """One connection's symbols, and the start of its outage while one awaits backfill (0: none)."""

    symbols: tuple[str, ...]
    since_ns: int = 0
    downtime: bool = False  # the window is the process's (or the actor's) downtime


class LiveCandles:
    """In-progress candles, latest state wins per (exchange, symbol, interval); bounded by the
    subscriptions. A closed candle retires the in-progress state of its own and older periods."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, str], Candle] = {}
        self.closed_ts: dict[tuple[str, str, str], int] = {}  # newest closed period per key

    def update(self, candles: list[Candle]) -> None:
        pending, closed_ts = self.pending, self.closed_ts
        for c in candles:
            key = (c.exchange, c.symbol, c.interval)
            if c.ts_ns <= closed_ts.get(key, -1):
                continue  # a late update of a period already closed: the closed row is final
            held = pending.get(key)
            if held is None or c.ts_ns >= held.ts_ns:
                pending[key] = c

    def close(self, candles: list[Candle]) -> None:
        for c in candles:
            key = (c.exchange, c.symbol, c.interval)
            if c.ts_ns > self.closed_ts.get(key, -1):
                self.closed_ts[key] = c.ts_ns
            held = self.pending.get(key)
            if held is not None and held.ts_ns <= c.ts_ns:
                del self.pending[key]

    def take(self) -> list[Candle]:
        rows, self.pending = list(self.pending.values()), {}
        return rows

    def __len__(self) -> int:
        return len(self.pending)


@dataclass
class Rejected:
    """Rows refused by validation in one step: counts by reason, the first row, the samples due for the
    dead-letter file."""

    table: Table
    reasons: dict[str, int]
    first: Record  # fit for JSON, as the samples
    samples: list[tuple[Record, str]]  # (row fit for JSON, why)


@dataclass
class Outcome:
    """What one step of the pipeline produced, for the actor to apply."""

    rows: dict[str, list] = field(default_factory=dict)  # to store now, by table name (never empty lists)
    gaps: list[Gap] = field(default_factory=list)  # to backfill: ids that jumped
    outage_gaps: list[Gap] = field(default_factory=list)  # to backfill: the window of an outage (time, candles)
    after_restart: bool = False  # the outage window is the process's (or the actor's) downtime
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0  # dropped by the dedup window in this step
    backfilled: int = 0  # REST rows kept in this step

    def add(self, table: Table, rows: list) -> None:
        if rows:
            self.rows.setdefault(table.name, []).extend(rows)


class FeedPipeline:
    """One feed's row policy, across its connections; its state lives as long as the feed actor, except
    `memory`, which outlives it."""

    def __init__(self, feed: FeedConfig, protocol: FeedProtocol, memory: FeedMemory):
        self.feed, self.protocol, self.memory = feed, protocol, memory
        self.validator = RowValidator(feed.symbols, feed.max_future_skew_s, feed.max_string_len,
                                      Subscribed.of(protocol))
        self.reject_samples = SampleGate(REJECT_SAMPLE_INTERVAL_S)
        self.dedup = DedupWindow(feed.dedup_window_s, feed.dedup_max_entries)
        self.sequence = SequenceTracker(memory.last_ids, protocol.stream_key, memory.stream_symbols, memory.last_ts,
                                        feed.max_id_jump)
        self.live_candles = LiveCandles()
        # Each connection's share of the symbols, and its outage window while one awaits its backfill
        # (protocol.outage_gaps). The connections of a new incarnation begin with one: since the last trade its
        # predecessor (or, at process start, QuestDB) saw; a connection opened later for new listings does not.
        self.windows: dict[int, OutageWindow] = {}
        self.downtime_since_ns = memory.last_event_ns  # handed to the connections of the first plan, then 0
        self.connection_opened(0, feed.symbols)  # a feed has at least one connection; the actor names its share
        self.rejected: dict[str, int] = {}  # every row refused so far, by reason
        self.gaps = self.backfilled = 0

    def universe(self, symbols: tuple[str, ...]) -> None:
        """The feed now carries these symbols (a listing refresh): rows of others are refused as unknown."""
        feed, subscribed = self.feed, Subscribed.of(self.protocol)
        self.validator = RowValidator(symbols, feed.max_future_skew_s, feed.max_string_len, subscribed)

    def connection_opened(self, index: int, symbols: tuple[str, ...]) -> None:
        """Connection `index` carries `symbols` (again, after a change of its share: its window stays)."""
        window = self.windows.get(index)
        if window is not None:
            window.symbols = symbols
            return
        since = self.downtime_since_ns
        self.windows[index] = OutageWindow(symbols, since, bool(since))

    def first_plan_done(self) -> None:
        """Connections opened from now on carry new listings: nothing happened to them before."""
        self.downtime_since_ns = 0

    def connection_closed(self, index: int) -> None:
        self.windows.pop(index, None)

    def outage_began(self, now_ns: int, index: int = 0) -> None:
        """The connection is gone (or paused): the window starts at the newest event seen."""
        window = self.windows.get(index)
        if window is not None and not window.since_ns:
            window.since_ns = self.memory.last_event_ns or now_ns
            window.downtime = False

    def live(self, rows: ParsedRows, current: bool, now_ns: int, now: float, index: int = 0) -> Outcome:
        """A burst of live rows of connection `index`; `current`: it comes from the connection in use (not one
        being replaced) and carried data, so it may close that connection's outage window."""
        out = Outcome()
        trades = self._valid(out, TRADES, rows.trades, now_ns, now)
        closed = self._valid(out, CANDLES, rows.candles, now_ns, now)
        live_candles = self._valid(out, CANDLES, rows.live_candles, now_ns, now)
        window = self.windows.get(index)
        if window is not None and window.since_ns and current:
            # The first burst after an outage bounds its window: what happened before comes over REST. Its
            # newest trade, not its oldest: a resubscribe snapshot (Kraken) may reach back into the outage.
            until_ns = max((t.ts_ns for t in trades), default=now_ns)
            out.outage_gaps = self._outage_gaps(window, until_ns)
            out.after_restart = window.downtime
            window.since_ns = 0
        memory = self.memory
        if trades:
            memory.last_event_ns = max(memory.last_event_ns, trades[-1].ts_ns)
            before = self.dedup.dropped
            trades = self.dedup.fresh(trades, now)
            out.duplicates = self.dedup.dropped - before
            if self.protocol.contiguous_ids:
                out.gaps += self.sequence.observe(trades)
                if refused := self.sequence.take_refused():
                    self._reject(out, TRADES, [(row, IMPLAUSIBLE_ID) for row in refused], now)
                    held = {id(row) for row in refused}
                    trades = [row for row in trades if id(row) not in held]
            out.add(TRADES, trades)
        if live_candles:
            memory.last_event_ns = max(memory.last_event_ns, live_candles[-1].ts_ns)
            self.live_candles.update(live_candles)
        if closed:
            self.live_candles.close(closed)
            out.add(CANDLES, closed)
        self.gaps += len(out.gaps) + len(out.outage_gaps)
        return out

    def _outage_gaps(self, window: OutageWindow, until_ns: int) -> list[Gap]:
        """The outage window's gaps. After a restart, each table's from where its own stored rows end: the tables'
        buffers flush each on its own (candles maybe seldom), so a kill cuts each table at its own point, and a
        window from the newest row of any table would skip the candles the candle buffer lost."""
        symbols, since = window.symbols, window.since_ns
        gaps = self.protocol.outage_gaps(symbols, since, until_ns)
        if not window.downtime:
            return gaps
        labels = {self.protocol.exchange, *self.protocol.trade_labels()}
        ends: dict[str, int] = {}
        held = set(symbols)
        for key in [k for k in self.memory.stored_ns if k[2] in held]:  # each connection takes its own marks
            table, exchange, _ = key
            ts_ns = self.memory.stored_ns.pop(key)
            if exchange in labels:
                ends[table] = max(ends.get(table, 0), ts_ns)
        if not any(w.downtime and w.since_ns for w in self.windows.values() if w is not window):
            self.memory.stored_ns = {}  # the last downtime window is done: the start's marks serve nothing more
        for table, end_ns in ends.items():
            if end_ns < since:
                gaps = [g for g in gaps if g.table.name != table] + [
                    g for g in self.protocol.outage_gaps(symbols, end_ns, until_ns) if g.table.name == table]
        return gaps

    def backfill(self, table: Table, rows: list, now_ns: int, now: float) -> Outcome:
        """One REST page of `table`: closed candles, or trades that fill a gap."""
        out = Outcome()
        rows = self._valid(out, table, rows, now_ns, now)
        if table is CANDLES:
            self.live_candles.close(rows)
        else:
            out.gaps += self.sequence.fill(rows)  # an implausible jump REST confirmed: the ids before it
            rows = self.dedup.fresh(rows, now)
        out.backfilled = len(rows)
        self.backfilled += len(rows)
        out.add(table, rows)
        return out

    def reconnected(self, index: int = 0) -> list[Gap]:
        """Connection `index` is up: whatever happened since each of its streams' last id, even if no live trade
        follows to reveal it."""
        window = self.windows.get(index)
        if not self.protocol.contiguous_ids or window is None:
            return []
        held = set(window.symbols)
        return [gap for gap in self.sequence.since_last() if gap.symbol in held]

    def stored_holes(self) -> list[Gap]:
        """Holes found in QuestDB at process start; handed out once, to the first incarnation."""
        holes, self.memory.stored_holes = self.memory.stored_holes, []
        self.gaps += len(holes)
        return holes

    def _valid(self, out: Outcome, table: Table, rows: list, now_ns: int, now: float) -> list:
        if not rows:
            return rows
        valid, rejected = self.validator.split(rows, now_ns)
        if rejected:
            self._reject(out, table, rejected, now)
        return valid

    def _reject(self, out: Outcome, table: Table, rejected: list[tuple[Row, str]], now: float) -> None:
        """Counted by reason, a sampled few to the dead letters (the actor writes them)."""
        reasons: dict[str, int] = {}
        for _, reason in rejected:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        samples = [(sample_row(row), f"rejected by validation: {reason} (feed {self.feed.name})")
                   for row, reason in rejected if self.reject_samples.due(reason, now)]
        out.rejected.append(Rejected(table, reasons, sample_row(rejected[0][0]), samples))

