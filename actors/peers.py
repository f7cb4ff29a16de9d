"""The heartbeat thread of the health actor: every few seconds, this instance's row into QuestDB and the rows of
the others back (storage/instances.py). I/O only; what the rows mean is config/instance.py peer_problems."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg2
import pykka

from marketfeed.config.instance import Peer
from marketfeed.storage.instances import heartbeat

HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class PeersSeen:
    """The instances heard of in the last window (me among them), or why QuestDB could not be asked."""

    peers: tuple[Peer, ...]
    error: str = ""


class PeerWatch(threading.Thread):
    def __init__(self, me: Peer, pg_dsn: str, prefix: str, actor_ref, interval_s: float = HEARTBEAT_S):
        super().__init__(name="peers", daemon=True)
        self.me, self.pg_dsn, self.prefix, self.actor_ref, self.interval_s = me, pg_dsn, prefix, actor_ref, interval_s
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                seen = PeersSeen(tuple(heartbeat(self.pg_dsn, self.prefix, self.me, time.time())))
            except psycopg2.Error as exc:  # QuestDB down: the next beat tries again; health says why meanwhile
                seen = PeersSeen((), str(exc).strip()[:300])
            except Exception as exc:  # noqa: BLE001 - a bug fails this beat, never the thread unseen
                seen = PeersSeen((), f"{type(exc).__name__}: {exc}"[:300])
            try:
                self.actor_ref.tell(seen)
            except pykka.ActorDeadError:
                return
            self._stopping.wait(self.interval_s)
