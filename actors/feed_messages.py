"""Messages a feed actor receives: from its reader threads (through their outlet), its backfill thread and its timers.

Each connection is numbered (`generation`); news of a connection already replaced is ignored, except its rows.
"""
from __future__ import annotations

from dataclasses import dataclass

from marketfeed.feeds.base import Gap, MalformedFrame, ParsedRows
from marketfeed.feeds.universe import Listing
from marketfeed.storage.tables import Table


@dataclass(frozen=True)
class Connected:
    generation: int
    url: str


@dataclass(frozen=True)
class Disconnected:
    generation: int
    reason: str


@dataclass(frozen=True)
class SubscriptionRefused:
    generation: int
    reason: str


@dataclass(frozen=True)
class ShutdownAnnounced:
    """The exchange said it will close the connection (maintenance, 24 h cut): open a successor first."""

    generation: int


@dataclass(frozen=True)
class FrameBatch:
    """One burst of frames of one connection, parsed; the receiver owns `rows` and reads it only."""

    generation: int
    rows: ParsedRows
    frames: int
    data_frames: int
    malformed: tuple[MalformedFrame, ...]
    pongs: int = 0  # Control.PONG replies to our application-level pings


@dataclass(frozen=True)
class BackfillRows:
    """One REST page of one table: trades, or closed candles; never empty."""

    table: Table
    rows: list


@dataclass(frozen=True)
class BackfillDone:
    """The backfill thread is done with one gap: filled, or failed with the exchange's word on what next."""

    gap: Gap  # as requested
    rows: int  # rows fetched (and told as BackfillRows) before it ended
    error: str = ""  # "": filled
    left: Gap | None = None  # on error: what is still missing (the page that failed)
    retry_after_s: float = 0.0  # on error: the exchange's own delay (Retry-After, the end of a ban); 0: ours
    unrecoverable: bool = False  # on error: asking again cannot help (e.g. past the exchange's retention)


@dataclass(frozen=True)
class Reconnect:
    generation: int


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class UniverseListed:
    """The exchange's listing, as its listing endpoint answered (actors/universe.py)."""

    listings: tuple[Listing, ...]


@dataclass(frozen=True)
class UniverseFailed:
    """The listing could not be read: why, and the exchange's own delay (0: ours)."""

    reason: str
    retry_after_s: float = 0.0


@dataclass(frozen=True)
class RefreshUniverse:
    """Read the listing again (the refresh timer, SIGHUP, a failed read's retry)."""
