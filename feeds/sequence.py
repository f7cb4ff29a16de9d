"""Trade-id sequence tracking: where ids are contiguous, a jump is a gap to backfill."""
from __future__ import annotations

from collections.abc import Callable

from marketfeed.feeds.base import Gap


class SequenceTracker:
    """Last id seen per stream. State survives reconnects, so the outage itself shows up as a gap.

    `stream_key(row)` names the id sequence a row belongs to (FeedProtocol.stream_key); without it
    ids are tracked per symbol and gaps carry no stream. `last_ids` is shared, not copied: it is
    the feed's memory across actor restarts.
    """

    def __init__(self, last_ids: dict[str, int] | None = None, stream_key: Callable[[tuple], str] | None = None,
                 symbols: dict[str, str] | None = None):
        self.last_ids: dict[str, int] = last_ids if last_ids is not None else {}
        self.symbols: dict[str, str] = symbols if symbols is not None else {}  # stream → symbol, where they differ
        self.stream_key = stream_key

    def observe(self, rows: list) -> list[Gap]:
        """Advance over live rows (in arrival order); return the gaps they reveal."""
        gaps = []
        last_ids, stream_key = self.last_ids, self.stream_key
        for row in rows:
            symbol, trade_id = row[2], row[3]
            stream = stream_key(row) if stream_key is not None else symbol
            last = last_ids.get(stream)
            if last is None:
                self._first(stream, symbol, trade_id)
            elif trade_id == last + 1:
                last_ids[stream] = trade_id
            elif trade_id > last + 1:
                gaps.append(Gap(symbol, last + 1, trade_id - 1, stream="" if stream_key is None else stream))
                last_ids[stream] = trade_id
            # trade_id <= last: a late or repeated id; the dedup window has already judged it
        return gaps

    def fill(self, rows: list) -> None:
        """Advance over backfilled rows: they close gaps, they reveal none."""
        last_ids, stream_key = self.last_ids, self.stream_key
        for row in rows:
            stream = stream_key(row) if stream_key is not None else row[2]
            last = last_ids.get(stream)
            if last is None:
                self._first(stream, row[2], row[3])
            elif row[3] > last:
                last_ids[stream] = row[3]

    def since_last(self) -> list[Gap]:
        """After a reconnect: everything after the last id of each stream, up to whatever exists now."""
        return [Gap(self.symbols.get(stream, stream), last + 1, None, stream="" if self.stream_key is None else stream)
                for stream, last in self.last_ids.items()]

    def _first(self, stream: str, symbol: str, trade_id: int) -> None:
        self.last_ids[stream] = trade_id
        if stream != symbol:
            self.symbols[stream] = symbol
