"""`marketfeed run` with one addition: when each row was acknowledged by QuestDB is recorded.

`python -m bench.probe CONFIG [ACKFILE]`: the buffer actors' writer is swapped for a subclass that,
after each successful flush, notes (trade id, ack time in ns) per row; the pairs are written to
ACKFILE as int64 when the service exits. The bench knows when the paced simulator sent each trade
id, so it derives the send→ack latency of every row.
"""
from __future__ import annotations

import sys
import time
from array import array

import marketfeed.actors.buffer
from marketfeed.cli.service import run
from marketfeed.config.loader import load
from marketfeed.storage.writer import FlushWorker

ACKS = array("q")  # trade id, ack ns, trade id, ack ns, …


class AckRecordingWorker(FlushWorker):
    def _write(self, rows: list) -> dict:
        outcome = super()._write(rows)
        acked_ns = time.time_ns()
        for row in rows:
            ACKS.append(row.trade_id)
            ACKS.append(acked_ns)
        return outcome


def main(config_path: str, ack_path: str = "") -> int:
    """Without ACKFILE, `marketfeed run` as it is: the max-rate runs measure the service, not the recording."""
    if ack_path:  # the probe's point: the buffer actors build the recording writer in place of theirs
        marketfeed.actors.buffer.FlushWorker = AckRecordingWorker  # type: ignore[misc]
    code = run(load(config_path))
    if ack_path:
        with open(ack_path, "wb") as f:
            ACKS.tofile(f)
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
