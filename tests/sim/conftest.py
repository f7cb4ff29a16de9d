"""Fixtures: one simulator for the session (faults are per connection), clients closed after each test."""
from __future__ import annotations

import pytest
from simclient import COMBINED_PATH, PING_INTERVAL, PONG_TIMEOUT, SYMBOLS, Client

from marketfeed.sim import Simulator


@pytest.fixture(scope="session")
def sim():
    with Simulator(["binance"], SYMBOLS, rate=200, seed=7, ping_interval=PING_INTERVAL, pong_timeout=PONG_TIMEOUT) as s:
        yield s


@pytest.fixture
def connect(sim):
    clients: list[Client] = []

    def open_client(path: str = COMBINED_PATH) -> Client:
        clients.append(Client(sim, path))
        return clients[-1]

    yield open_client
    for client in clients:
        client.ws.shutdown()
