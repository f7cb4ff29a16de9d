"""Trade-id sequence tracking: where ids are contiguous, a jump is a gap to backfill."""
from __future__ import annotations

from collections.abc import Callable

from marketfeed.feeds.base import Gap
from marketfeed.feeds.rows import Trade

PROBE_TTL_NS = 60 * 10**9  # an implausible id REST did not confirm in this long no longer stops the next question


class SequenceTracker:
    """Last id seen per stream, and its event time. State survives reconnects, so the outage itself shows up
    as a gap; each gap carries the time of the trade before it (`Gap.before_ns`), where an exchange that pages
    its REST trades by time (Kraken) finds it.

    `stream_key(row)` names the id sequence a row belongs to (FeedProtocol.stream_key); without it
    ids are tracked per symbol and gaps carry no stream. `last_ids` and `last_ts` are shared, not copied:
    they are the feed's memory across actor restarts.
    """

    def __init__(self, last_ids: dict[str, int] | None = None, stream_key: Callable[[Trade], str] | None = None,
                 symbols: dict[str, str] | None = None, last_ts: dict[str, int] | None = None, max_jump: int = 0):
        self.last_ids: dict[str, int] = last_ids if last_ids is not None else {}
        self.last_ts: dict[str, int] = last_ts if last_ts is not None else {}  # absent: unknown
        self.symbols: dict[str, str] = symbols if symbols is not None else {}  # stream → symbol, where they differ
        self.stream_key = stream_key
        self.max_jump = max_jump  # ids further ahead than this are not trusted until REST shows them (0: any)
        self.probes: dict[str, tuple[int, int]] = {}  # stream → (id asked of REST, when: received_ns)
        self.refused: list[Trade] = []  # implausible rows of the last observe(): never stored

    def observe(self, rows: list[Trade]) -> list[Gap]:
        """Advance over live rows (in arrival order); return the gaps they reveal."""
        gaps = []
        last_ids, last_ts, stream_key = self.last_ids, self.last_ts, self.stream_key
        for row in rows:
            symbol, trade_id = row[2], row[3]
            stream = stream_key(row) if stream_key is not None else symbol
            last = last_ids.get(stream)
            if last is None:
                self._first(stream, symbol, trade_id)
            elif trade_id == last + 1:
                last_ids[stream] = trade_id
            elif trade_id > last + 1:
                if self.max_jump and trade_id - last > self.max_jump:
                    gaps += self._implausible(row, stream, last)
                    continue
                gaps.append(Gap(symbol, last + 1, trade_id - 1, stream="" if stream_key is None else stream,
                                before_ns=last_ts.get(stream, 0)))
                last_ids[stream] = trade_id
            else:
                continue  # a late or repeated id; the dedup window has already judged it
            last_ts[stream] = row[0]
        return gaps

    def _implausible(self, row: Trade, stream: str, last: int) -> list[Gap]:
        """A jump past max_jump: the row is refused and the position stays; REST is asked for that one id. If the
        exchange has it, fill() confirms the jump (and the ids before it become a gap); a fake id finds nothing.
        One question per stream at a time, for at most PROBE_TTL_NS: a flood of fake ids asks nothing more."""
        self.refused.append(row)
        asked = self.probes.get(stream)
        if asked is not None and row[7] - asked[1] < PROBE_TTL_NS:
            return []
        self.probes[stream] = (row[3], row[7])
        return [Gap(row[2], row[3], row[3], stream="" if self.stream_key is None else stream,
                    before_ns=self.last_ts.get(stream, 0))]

    def take_refused(self) -> list[Trade]:
        refused, self.refused = self.refused, []
        return refused

    def fill(self, rows: list[Trade]) -> list[Gap]:
        """Advance over backfilled rows: they close gaps; they reveal one only where REST confirms an implausible
        jump (the ids between the position and the confirmed id)."""
        gaps: list[Gap] = []
        last_ids, stream_key = self.last_ids, self.stream_key
        for row in rows:
            stream = stream_key(row) if stream_key is not None else row[2]
            last = last_ids.get(stream)
            if last is None:
                self._first(stream, row[2], row[3])
            elif row[3] > last:
                asked = self.probes.get(stream)
                if asked is not None and asked[0] == row[3]:
                    del self.probes[stream]
                    if row[3] > last + 1:
                        gaps.append(Gap(row[2], last + 1, row[3] - 1, stream="" if stream_key is None else stream,
                                        before_ns=self.last_ts.get(stream, 0)))
                last_ids[stream] = row[3]
            else:
                continue
            self.last_ts[stream] = row[0]
        return gaps

    def since_last(self) -> list[Gap]:
        """After a reconnect: everything after the last id of each stream, up to whatever exists now."""
        return [Gap(self.symbols.get(stream, stream), last + 1, None, stream="" if self.stream_key is None else stream,
                    before_ns=self.last_ts.get(stream, 0))
                for stream, last in self.last_ids.items()]

    def _first(self, stream: str, symbol: str, trade_id: int) -> None:
        self.last_ids[stream] = trade_id
        if stream != symbol:
            self.symbols[stream] = symbol
