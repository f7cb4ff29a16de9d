"""Rows QuestDB refused as bad data: one JSON line each, with the error, for a human to look at.

{"at": "2024-01-01T00:00:00.000000Z", "table": "trades", "error": "...", "row": {"ts_ns": ..., ...}}
Appended and fsynced per call: these rows exist nowhere else any more.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from marketfeed.feeds.rows import exact_text


class Record(Protocol):
    """A row as a dead letter holds it: a row QuestDB refused, or a validation sample (fields fit for JSON)."""

    def _asdict(self) -> dict[str, Any]: ...


class DeadLetters:
    def __init__(self, directory: str | os.PathLike, table: str):
        self.path = Path(directory) / f"{table}.jsonl"
        self.table = table

    def write(self, rejected: Sequence[tuple[Record, str]]) -> None:
        """Append (row, error) pairs; rows are NamedTuples."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        lines = b"".join(
            orjson.dumps({"at": at, "table": self.table, "error": error, "row": row._asdict()}, default=exact_text)
            + b"\n"
            for row, error in rejected)
        with open(self.path, "ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def read(path: str | os.PathLike) -> list[dict]:
    """The dead letters in a file, oldest first (for tools and tests)."""
    p = Path(path)
    return [orjson.loads(line) for line in p.read_bytes().splitlines()] if p.exists() else []
