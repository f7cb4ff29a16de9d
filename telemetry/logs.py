"""One JSON object per log line: ts, level, logger, event, then the event's own fields.

Nothing the process prints bypasses the scrubber: setup() routes the interpreter's own printers — uncaught
exceptions of the main thread (sys.excepthook) and of any other thread (threading.excepthook: readers, the
backfill thread, pykka's actor threads, timers), unraisable ones (sys.unraisablehook) and warnings — to
this logger, whose every line is scrubbed.
"""
from __future__ import annotations

import logging
import sys
import threading
import traceback
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

import orjson

_handler: logging.Handler | None = None
_secrets: tuple[str, ...] = ()  # config secrets no line may show (config.secrets.secret_values)
SECRET_SHOWN_AS = "***"


def hide(secrets) -> None:
    """From now on, every log line (and whatever else is scrubbed) shows these values as ***."""
    global _secrets
    # As is, JSON-escaped, as repr() shows it (a traceback's message) and URL-encoded (a query, apiKey=…).
    forms = {form for s in secrets if s for form in (s, orjson.dumps(s).decode()[1:-1], repr(s)[1:-1], quote(s),
                                                      quote_plus(s))}
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
    _handler.handleError = _line_failed  # type: ignore[method-assign]
    root.addHandler(_handler)
    root.setLevel(level.upper())
    logging.getLogger("websocket").setLevel(logging.WARNING)
    _route_crashes()


_crash_log = logging.getLogger("marketfeed.crash")


def _route_crashes() -> None:
    """Uncaught, unraisable and warned-about exceptions become scrubbed log lines, never raw stderr text."""
    sys.excepthook = _uncaught_in_main
    threading.excepthook = _uncaught_in_thread
    sys.unraisablehook = _unraisable
    logging.captureWarnings(True)  # warnings.showwarning → the "py.warnings" logger


def _uncaught_in_main(exc_type, exc, tb) -> None:
    _crashed("uncaught_exception", (exc_type, exc, tb), thread=threading.current_thread().name)


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    # SystemExit too, which Python's own hook ignores: a worker thread it ends has died all the same.
    thread = args.thread.name if args.thread is not None else "?"
    _crashed("thread_died", (args.exc_type, args.exc_value, args.exc_traceback), thread=thread)


def _unraisable(args) -> None:
    _crashed("unraisable_exception", (args.exc_type, args.exc_value, args.exc_traceback),
             message=args.err_msg or "", object=repr(args.object)[:200])


def _line_failed(record: logging.LogRecord) -> None:
    """A line that could not be written: logging's own report (the record's message and arguments) unscrubbed
    would show what the line held, so it is said scrubbed, to stderr."""
    sys.stderr.write(scrub(f"log line {record.msg!r} lost: " + "".join(traceback.format_exception(*sys.exc_info()))))


def _crashed(name: str, exc_info: tuple, **fields) -> None:
    try:
        event(_crash_log, name, logging.ERROR, exc_info=exc_info, **fields)
    except Exception:  # noqa: BLE001 - no logger to take it (closed, broken): stderr, scrubbed all the same
        sys.stderr.write(scrub(f"{name}: " + "".join(traceback.format_exception(*exc_info))))


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
