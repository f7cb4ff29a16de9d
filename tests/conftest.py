import itertools
import logging
import os
import sys
import threading

import pytest

from tests.support.questdb import QuestDB
from tests.support.service import Services

_prefixes = itertools.count()


def pytest_collection_modifyitems(items):
    """A test that needs the session QuestDB (so every `service` test too) is an integration test, so that
    `-m "not integration"` runs the fast core alone. Tests starting a QuestDB of their own say so themselves."""
    for item in items:
        if "questdb" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _process_logging_restored():
    """A test that calls telemetry.logs.setup() in this process leaves a handler on pytest's captured stdout (closed
    once the test ends) and the crash hooks installed: both are undone, so no later test logs into a closed file."""
    from marketfeed.telemetry import logs

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    if logs._handler is not None and logs._handler not in handlers:
        logs._handler = None
    root.setLevel(level)
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def questdb(tmp_path_factory):
    """One real QuestDB for the whole session; tests isolate themselves by table prefix."""
    server = QuestDB(tmp_path_factory.mktemp("questdb"))
    server.start()
    print(f"\nQuestDB started in {server.start_seconds:.1f}s")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_questdb(tmp_path_factory):
    """A QuestDB of the requesting module's own: a test that stops it disturbs no other module."""
    server = QuestDB(tmp_path_factory.mktemp("questdb-own"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def table_prefix(request) -> str:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"t{os.getpid()}_{next(_prefixes)}_{name}_"


@pytest.fixture
def service(tmp_path, questdb, table_prefix):
    """service(feeds, env=None, **config sections) starts `marketfeed run` against the session QuestDB;
    service.simulator(...) starts a simulator. Every process is killed, then every simulator stopped, after the test."""
    with Services(tmp_path, questdb, table_prefix) as services:
        yield services
