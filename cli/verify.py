"""`marketfeed verify [-c FILE] [--since T] [--json] [--repair]`: duplicates and trade-id gaps in QuestDB, and the
gaps the recovery ledger closed without filling them. --repair hands the id gaps found to the service's ledger.

Exit 0: clean; 1: duplicates, gaps or unfilled gaps found; 2: QuestDB could not be asked (or a bad --since).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg2

from marketfeed.config.schema import Config
from marketfeed.feeds import registry
from marketfeed.storage.ledger import Journal, Origin, RequestBox
from marketfeed.storage.recovery import hole_gap, stored_holes
from marketfeed.storage.verify import SeriesReport, UnfilledGap, as_dict, parse_since, unfilled_since, verify

EXIT_CLEAN, EXIT_FOUND, EXIT_ERROR = 0, 1, 2


def ledger_unfilled(config: Config) -> list[UnfilledGap]:
    """The gaps the service's recovery ledger, and the journal of every `marketfeed backfill` job, gave up on
    (read only: the service or a job may be writing them)."""
    journals = [Path(config.ledger.dir), *sorted((Path(config.ledger.dir) / "backfill").glob("*/"))]
    return [UnfilledGap(c.gap.feed, c.gap.gap.table.name, c.gap.gap.symbol, c.gap.gap.stream,
                        f"{c.reason}: {c.detail}", c.gap.gap.first_id, c.gap.gap.last_id, c.gap.gap.since_ns,
                        c.gap.gap.until_ns)
            for directory in journals for c in Journal(directory).load(repair=False)[0].closed]


REPAIR_ALL_S = 100 * 365 * 86400.0  # --repair without --since: holes anywhere in the stored history


def repair(config: Config, cutoff: datetime | None) -> list[str]:
    """Every hole in the stored id sequences (since `cutoff`) handed to the ledger of the feed that fetches it, as
    requests the running service (or its next start) opens and fills; what this says it did, one line each."""
    q = config.questdb
    protocols = [(f, p) for f in config.feeds if f.backfill
                 and (p := registry.exchange(f.exchange).protocol(f)).contiguous_ids]
    labels = tuple(sorted({label for _, p in protocols for label in p.trade_labels()}))
    window_s = REPAIR_ALL_S if cutoff is None else max(0.0, (datetime.now(UTC) - cutoff).total_seconds())
    holes = stored_holes(q.pg_dsn, q.table_prefix, labels, window_s)
    box, said, handed = RequestBox(config.ledger.dir), [], set()
    for f, protocol in protocols:
        mine = [h for h in holes if h.exchange in protocol.trade_labels() and h.symbol in f.symbols]
        if mine:
            path = box.put(f.name, [hole_gap(protocol, h) for h in mine], Origin.STORED_HOLE)
            handed.update(mine)
            said.append(f"repair: handed {len(mine)} gap{'s' if len(mine) != 1 else ''} to the ledger of feed "
                        f"{f.name} ({path}): the service opens them at its next tick (or start)")
    said += [f"repair: no feed of this config fetches {h.exchange} {h.symbol} ids {h.first_id}..{h.last_id}"
             for h in holes if h not in handed]
    return said


def run(config: Config, since: str | None, as_json: bool, closed_unfilled: Iterable[UnfilledGap] = (),
        repair_gaps: bool = False) -> int:
    """`closed_unfilled`: the gaps the recovery ledger closed without filling them (unrecoverable, expired)."""
    try:
        cutoff = parse_since(since) if since else None
        reports = verify(config.questdb.pg_dsn, config.questdb.table_prefix, cutoff)
    except ValueError as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except psycopg2.Error as exc:
        print(f"verify: cannot query QuestDB ({config.questdb.pg_dsn.split(' password')[0]}): {exc}".strip(),
              file=sys.stderr)
        return EXIT_ERROR
    unfilled = unfilled_since(closed_unfilled, cutoff)
    clean = all(r.clean for r in reports) and not unfilled
    repaired: list[str] = []
    if repair_gaps and not clean:
        try:
            repaired = repair(config, cutoff)
        except (psycopg2.Error, OSError) as exc:
            print(f"verify: --repair: {exc}".strip(), file=sys.stderr)
            return EXIT_ERROR
    if as_json:
        body = {"clean": clean, "since": cutoff.isoformat() if cutoff else None,
                "series": [as_dict(r) for r in reports], "unfilled": [asdict(g) for g in unfilled],
                "repair": repaired}
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print("\n".join([render(reports, unfilled), *repaired]))
    return EXIT_CLEAN if clean else EXIT_FOUND


def render(reports: list[SeriesReport], unfilled: list[UnfilledGap]) -> str:
    out = [*_render_series(reports), *(f"unfilled: {_render_gap(g)}" for g in unfilled)]
    out.append("clean" if all(r.clean for r in reports) and not unfilled else "problems found")
    return "\n".join(out)


def _render_gap(g: UnfilledGap) -> str:
    if g.since_ns:
        until = _iso(g.until_ns) if g.until_ns else "now"
        span = f"{_iso(g.since_ns)}..{until}"
    else:
        span = f"ids {g.first_id}..{'' if g.last_id is None else g.last_id}"
    return f"{g.table} feed {g.feed} {g.symbol} ({g.stream}) {span}: {g.reason}"


def _iso(ns: int) -> str:
    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _render_series(reports: list[SeriesReport]) -> list[str]:
    if not reports:
        return ["no rows stored"]
    header = ("table", "exchange", "symbol", "interval", "rows", "duplicates", "missing_ids")
    lines = [header] + [(r.table, r.exchange, r.symbol, r.interval or "-", str(r.rows), str(r.duplicates),
                         "-" if r.missing_ids is None else str(r.missing_ids)) for r in reports]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    for r in reports:
        where = f"{r.table} {r.exchange} {r.symbol}"
        out += [f"duplicate: {where} trade id {i}" for i in r.duplicate_ids]
        out += [f"gap: {where} ids {a}..{b} ({b - a + 1} missing)" for a, b in r.gaps]
    return out
