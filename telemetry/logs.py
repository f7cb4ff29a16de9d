"""One JSON object per log line: ts, level, logger, event, then the event's own fields."""
from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime

import orjson

_handler: logging.Handler | None = None
_secrets: tuple[str, ...] = ()  # config secrets no line may show (config.secrets.secret_values)
SECRET_SHOWN_AS = "***"


def hide(secrets) -> None:
    """From now on, every log line (and whatever else is scrubbed) shows these values as ***."""
    global _secrets
    forms = {form for s in secrets if s for form in (s, orjson.dumps(s).decode()[1:-1])}  # as is and JSON-escaped
    _secrets = tuple(sorted(forms, key=len, reverse=True))  # longest first: no partial leftovers


def scrub(text: str) -> str:
    """`text` with every hidden secret replaced; a few `in` checks when there is nothing to hide."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, SECRET_SHOWN_AS)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            line["traceback"] = "".join(traceback.format_exception(*record.exc_info))
        return scrub(orjson.dumps(line, default=str).decode())


def event(logger: logging.Logger, name: str, level: int = logging.INFO, exc_info=None, **fields) -> None:
    """Log one structured event: `event(log, "feed_connected", feed="binance", url=...)`."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)


def setup(level: str = "info", path: str = "") -> None:
    """Route every logger (pykka's too) to one JSON handler on stdout or a file."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stdout)
    _handler.setFormatter(JsonFormatter())
    root.addHandler(_handler)
    root.setLevel(level.upper())
    logging.getLogger("websocket").setLevel(logging.WARNING)


def reopen() -> None:
    """Reopen the log file (after logrotate moved it); a no-op on stdout."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


def stdout_stream():
    return getattr(_handler, "stream", sys.stdout)
