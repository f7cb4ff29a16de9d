import itertools
import os

import pytest

from tests.support.questdb import QuestDB

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def questdb(tmp_path_factory):
    """One real QuestDB for the whole session; tests isolate themselves by table prefix."""
    server = QuestDB(tmp_path_factory.mktemp("questdb"))
    server.start()
    print(f"\nQuestDB started in {server.start_seconds:.1f}s")
    yield server
    server.stop()


@pytest.fixture
def table_prefix(request) -> str:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"t{os.getpid()}_{next(_prefixes)}_{name}_"
