"""systemd's notify protocol (sd_notify(3)): newline-separated KEY=VALUE datagrams to $NOTIFY_SOCKET.

No systemd library needed: an AF_UNIX datagram socket, with `@name` meaning the abstract namespace.
Outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger("marketfeed.sdnotify")


def socket_address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET as an address: a filesystem path, or `@name` for an abstract socket."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    def __init__(self, address: str | bytes | None, watchdog_s: float | None = None):
        self.address = address
        self.watchdog_s = watchdog_s  # systemd expects a ping at least this often (WatchdogSec)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value.startswith(("/", "@")) else None
        watchdog_s = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send one state change, e.g. notify(READY=1, STATUS="ok"); False when not under systemd or failed."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self.address)
            return True
        except OSError as exc:  # systemd gone or socket full: never fatal for the service
            log.warning("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = "") -> bool:
        fields: dict[str, str | int] = {"READY": 1, "MAINPID": os.getpid(), **({"STATUS": status} if status else {})}
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.watchdog_s is not None and self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
