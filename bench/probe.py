"""`marketfeed run` with one addition: every acknowledged row's send→ack latency is recorded.

`python -m bench.probe CONFIG LAGFILE`: the buffer actors' writer is swapped for a subclass that,
after each successful flush, notes ack time − event time (the simulator stamps send time as event
time), and the microsecond lags are written to LAGFILE as int64 when the service exits.
"""
from __future__ import annotations

import sys
import time
from array import array

import actors.buffer
from cli.service import run
from config.loader import load
from storage.writer import FlushWorker

LAGS_US = array("q")


class LagRecordingWorker(FlushWorker):
    def _write(self, rows: list) -> dict:
        outcome = super()._write(rows)
        acked_ns = time.time_ns()
        LAGS_US.extend((acked_ns - row.ts_ns) // 1000 for row in rows)
        return outcome


def main(config_path: str, lag_path: str) -> int:
    actors.buffer.FlushWorker = LagRecordingWorker
    code = run(load(config_path))
    with open(lag_path, "wb") as f:
        LAGS_US.tofile(f)
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
