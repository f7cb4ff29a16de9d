"""The on-disk spool of one table: batches wait here, in order, while QuestDB cannot take them.

One file per batch, named by a sequence number and its row count, so "in order" is "by name" and a replayed batch
is deleted only after QuestDB acknowledged it (a crash in between replays it again; DEDUP keys make
that harmless). A batch is written to a temporary name and renamed, so a process killed mid-write
leaves no half batch behind. fsync policy "batch": file and directory are fsynced before append()
returns, so a spooled batch survives power loss; "never": it survives our process being killed,
not the machine losing power.

Bounded by max_bytes; what happens when full is the caller's choice (drop_oldest here, or refuse).
Not thread-safe: one writer thread owns it.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import orjson

from marketfeed.feeds.rows import exact_text

SUFFIX = ".batch"


class SpoolFull(Exception):
    """append() would pass max_bytes."""


class Spool:
    def __init__(self, directory: str | os.PathLike, max_bytes: int, fsync: bool = True):
        self.dir = Path(directory)
        self.max_bytes, self.fsync = max_bytes, fsync
        for leftover in self.dir.glob("*.tmp"):  # a write our killed predecessor did not finish
            leftover.unlink()
        # (sequence, rows, bytes), oldest first
        self._files: deque[tuple[int, int, int]] = deque(sorted(map(_entry, self.dir.glob(f"*{SUFFIX}"))))
        self.bytes = sum(size for *_, size in self._files)
        self.rows = sum(rows for _, rows, _ in self._files)
        self._next = self._files[-1][0] + 1 if self._files else 1

    def __len__(self) -> int:
        """Batches waiting."""
        return len(self._files)

    def append(self, rows: list) -> int:
        """Store a batch behind the others; returns its size in bytes. Raises SpoolFull."""
        data = orjson.dumps([list(row) for row in rows], default=exact_text)  # a Decimal as its text
        if self.bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"{self.dir}: {self.bytes} + {len(data)} bytes > max_bytes {self.max_bytes}")
        seq = self._next
        self.dir.mkdir(parents=True, exist_ok=True)  # created on first use: an unused spool leaves no trace
        tmp = self.dir / f"{seq:016d}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self._path(seq, len(rows)))
        if self.fsync:
            self._fsync_dir()
        self._next += 1
        self._files.append((seq, len(rows), len(data)))
        self.bytes += len(data)
        self.rows += len(rows)
        return len(data)

    def oldest(self, row_type) -> list:
        """The oldest batch, as rows of `row_type` (a NamedTuple class); the spool must not be empty."""
        seq, rows, _ = self._files[0]
        return [row_type(*values) for values in orjson.loads(self._path(seq, rows).read_bytes())]

    def remove_oldest(self) -> int:
        """Delete the oldest batch (replayed, or dropped to make room); returns its row count."""
        seq, rows, size = self._files.popleft()
        self._path(seq, rows).unlink(missing_ok=True)
        self.bytes -= size
        self.rows -= rows
        return rows

    def _path(self, seq: int, rows: int) -> Path:
        return self.dir / f"{seq:016d}-{rows}{SUFFIX}"

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _entry(path: Path) -> tuple[int, int, int]:
    """(sequence, rows, bytes) of a batch file named <sequence>-<rows>.batch."""
    seq, rows = path.name[: -len(SUFFIX)].split("-")
    return int(seq), int(rows), path.stat().st_size
