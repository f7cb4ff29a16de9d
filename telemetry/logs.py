"""One log line per record: ts, level, logger, event, then the event's own fields — as a JSON object, or as text
for a person at a terminal (time, level, feed, event, key=value).

A record not logged through event() (a library's — websockets, urllib3, pykka —, the simulator's, a warning's) is
given the same schema: event `<logger>_<level>` in snake_case (`websockets_server_error`), its text in `message`.

Nothing the process prints bypasses the scrubber: setup() routes the interpreter's own printers — uncaught
exceptions of the main thread (sys.excepthook) and of any other thread (threading.excepthook: readers, the
backfill thread, pykka's actor threads, timers), unraisable ones (sys.unraisablehook) and warnings — to
this logger, whose every line is scrubbed.
"""
from __future__ import annotations

import logging
import re
import sys
import textwrap
import threading
import traceback
from datetime import UTC, datetime
from pathlib import Path
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


# Loggers whose INFO and DEBUG records are another program's chatter: websockets' (per connection, per frame at
# DEBUG), the simulator's ("sim", the demo's, which hands websockets its own "sim.<exchange>" loggers: every
# connection and REST answer), urllib3's (per HTTP connection), asyncio's (the simulator's loop). Kept out of the
# service log; their warnings and errors stay in it, normalised.
CHATTY_LOGGERS = ("websocket", "websockets", "urllib3", "asyncio", "sim")


def snake_case(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def line_of(record: logging.LogRecord) -> dict:
    """The record as one line of the schema: ts, level, logger, event, then its fields (message, error, traceback)."""
    fields = getattr(record, "fields", None)  # None: not logged through event()
    line = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage() if fields is not None else snake_case(f"{record.name}_{record.levelname}"),
    }
    if fields is None:
        line["message"] = record.getMessage()
    elif fields:
        line.update(fields)
    if record.exc_info and record.exc_info[0] is not None:
        line["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        line["traceback"] = "".join(traceback.format_exception(*record.exc_info))
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(orjson.dumps(line_of(record), default=str).decode())


class TextFormatter(logging.Formatter):
    """time (UTC), level, feed, event, then key=value: one line per record, a traceback indented below it."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(as_text(line_of(record)))


def as_text(line: dict) -> str:
    ts = line["ts"].replace("T", " ").replace("+00:00", "Z")
    rest = " ".join(f"{key}={_text_value(value)}" for key, value in line.items()
                    if key not in ("ts", "level", "logger", "event", "feed", "traceback"))
    text = f"{ts} {line['level'].upper():<8} {line.get('feed', '-')!s:<14} {line['event']}{' ' + rest if rest else ''}"
    if "traceback" in line:
        text += "\n" + textwrap.indent(line["traceback"].rstrip("\n"), "    ")
    return text


def _text_value(value) -> str:
    """A plain word as it is; anything else (spaces, quotes, =, newlines, lists, maps) as JSON, on one line."""
    if isinstance(value, str) and value and re.fullmatch(r"[^\s\"=]+", value):
        return value
    return orjson.dumps(value, default=str).decode()


def event(logger: logging.Logger, name: str, level: int = logging.INFO, exc_info=None, **fields) -> None:
    """Log one structured event: `event(log, "feed_connected", feed="binance", url=...)`."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)


def resolved_format(log_format: str, path: str, terminal: bool) -> str:
    """"auto": text for a person (stdout a terminal, no log file), JSON for everything else (journald, files, pipes)."""
    if log_format != "auto":
        return log_format
    return "text" if terminal and not path else "json"


class LogFileError(Exception):
    """The log file cannot be opened: the service says so at start (naming service.log_file), before anything runs."""


def _open_file(path: str) -> logging.FileHandler:
    # Its directory is the operator's to make (with the owner and mode they mean): never created here.
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise LogFileError(f"cannot open {path}: its directory {parent} does not exist")
    try:
        return logging.FileHandler(path)
    except OSError as exc:
        raise LogFileError(f"cannot open {path}: {exc.strerror or exc}") from None


def setup(level: str = "info", path: str = "", log_format: str = "auto") -> None:
    """Route every logger (pykka's too) to one handler, JSON or text, on stdout or the file `path`.
    Raises LogFileError (and changes nothing) when the file cannot be opened."""
    global _handler
    handler = _open_file(path) if path else logging.StreamHandler(sys.stdout)
    formatter = {"json": JsonFormatter, "text": TextFormatter}[resolved_format(log_format, path, sys.stdout.isatty())]
    handler.setFormatter(formatter())
    handler.handleError = _line_failed  # type: ignore[method-assign]
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = handler
    root.addHandler(_handler)
    root.setLevel(level.upper())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
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
