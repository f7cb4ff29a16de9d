"""Universe selection: which of an exchange's listings a feed subscribes to. Pure: no I/O, no clock.

A feed whose `symbols` hold a pattern ("*", "BTC*", "*USDT") subscribes to what the exchange lists that matches
it: every entry of `symbols` is a pattern (a literal one matches exactly that name), narrowed by
`quote_assets` (empty: any), `exclude_symbols` (patterns) and `trading_only` (what the exchange says trades now).
Patterns are shell globs (fnmatch: *, ?, [...]) compared without regard to case, as exchanges spell names in their
own case. The listing comes from the exchange module (FeedProtocol.listing_request / parse_listing); the feed
reads it at start and every `universe_refresh_s`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from marketfeed.config.schema import FeedConfig

PATTERN_CHARS = frozenset("*?[")
MAX_SYMBOL_LEN = 64  # a listed name longer than this is no symbol (the rows' max_string_len default)
KNOWN_SHOWN = 30  # an unknown quote asset's message names at most this many known ones


@dataclass(frozen=True)
class Listing:
    """One market as the exchange lists it."""

    symbol: str  # exactly as the feed subscribes to it and as its rows carry it (BTCUSDT, BTC/USD, BTC-USD)
    base: str
    quote: str
    trading: bool  # the exchange says it trades now


class UniverseError(Exception):
    """The feed's universe cannot be selected; the message names the config key and what went wrong."""


def is_pattern(symbol: str) -> bool:
    return not PATTERN_CHARS.isdisjoint(symbol)


def listing(symbol: object, base: object, quote: object, trading: bool) -> Listing:
    """A Listing from a listing page's values, checked: TypeError or ValueError for what no exchange would list
    (parse_listing turns them into MalformedFrame)."""
    name, base_asset, quote_asset = _text("symbol", symbol), _text("base", base), _text("quote", quote)
    if not name or len(name) > MAX_SYMBOL_LEN or not name.isascii() or not name.isprintable() or " " in name:
        raise ValueError(f"not a symbol: {name[:80]!r}")
    if not base_asset or not quote_asset:
        raise ValueError(f"{name}: empty base or quote asset")
    return Listing(name, base_asset, quote_asset, trading)


def _text(what: str, value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"{what} is not a string: {value!r}")
    return value


@dataclass(frozen=True)
class UniverseSpec:
    """What a feed's config asks of the listing."""

    patterns: tuple[str, ...]  # feeds.symbols, every entry a pattern (a literal one matches itself)
    quote_assets: tuple[str, ...] = ()  # feeds.quote_assets, upper case; empty: any
    exclude: tuple[str, ...] = ()  # feeds.exclude_symbols, patterns
    trading_only: bool = True  # feeds.trading_only

    @classmethod
    def of(cls, feed: FeedConfig) -> UniverseSpec | None:
        """The feed's spec; None when its symbols are a plain list (subscribed as they are).

        An exchange without a listing endpoint (listing_request() is None) takes its own wildcard instead
        (Polygon's "*": T.*, every trade of the cluster): the spec is then not resolved, the symbols are used as
        they are (the config loader refuses any other pattern there)."""
        if not any(map(is_pattern, feed.symbols)):
            return None
        return cls(tuple(feed.symbols), tuple(q.upper() for q in feed.quote_assets), tuple(feed.exclude_symbols),
                   feed.trading_only)

    def matches(self, item: Listing) -> bool:
        name = item.symbol.upper()
        return (any(fnmatchcase(name, p.upper()) for p in self.patterns)
                and (not self.quote_assets or item.quote.upper() in self.quote_assets)
                and (item.trading or not self.trading_only)
                and not any(fnmatchcase(name, p.upper()) for p in self.exclude))


def select(spec: UniverseSpec, listings: Sequence[Listing]) -> tuple[str, ...]:
    """The listed symbols the spec selects, sorted (exchange spelling). UniverseError when a quote asset of
    spec.quote_assets is quoted by no listing, or nothing matches."""
    quotes = {item.quote.upper() for item in listings}
    for asset in spec.quote_assets:
        if asset not in quotes:
            known = sorted(quotes)
            shown = ", ".join(known[:KNOWN_SHOWN]) + (f", … ({len(known)} in all)" if len(known) > KNOWN_SHOWN else "")
            raise UniverseError(f"unknown quote asset {asset!r} (feeds.quote_assets); known: {shown or 'none'}")
    selected = sorted({item.symbol for item in listings if spec.matches(item)})
    if not selected:
        narrowed = [f"quote_assets {list(spec.quote_assets)}"] if spec.quote_assets else []
        narrowed += [f"exclude_symbols {list(spec.exclude)}"] if spec.exclude else []
        narrowed += ["trading_only"] if spec.trading_only else []
        raise UniverseError(f"no listing matches {list(spec.patterns)} (feeds.symbols"
                            + (f", narrowed by {', '.join(narrowed)}" if narrowed else "")
                            + f"); the exchange lists {len(listings)} symbols")
    return tuple(selected)
