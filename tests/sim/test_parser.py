"""marketfeed's own Binance parser reads the twin's frames and REST pages as ground truth."""
import urllib.request

import pytest
import websocket

from marketfeed.config.schema import FeedConfig
from marketfeed.feeds.base import Control, Gap, MalformedFrame, ParsedRows
from marketfeed.feeds.binance import BinanceProtocol
from marketfeed.feeds.rows import Trade


def expected_rows(sim, symbol: str, ids: list[int]) -> list[tuple]:
    market = sim.market("binance")[symbol]
    trades = [market.trade(market.index_of(i)) for i in ids]
    return [
        (t.time_ms * 1_000_000, "binance", symbol, t.trade_id, float(t.price), float(t.qty),
         "sell" if t.buyer_is_maker else "buy")
        for t in trades
    ]


def as_truth(rows: list[Trade]) -> list[tuple]:
    return [tuple(row)[:7] for row in rows]


@pytest.fixture
def protocol(sim):
    feed = FeedConfig(name="b", exchange="binance", url=sim.url("binance"), symbols=("BTCUSDT", "ETHUSDT"),
                      rest_url=sim.rest_url("binance"))
    return BinanceProtocol(feed)


def test_stream_frames_parse_to_ground_truth(sim, protocol):
    ws = websocket.create_connection(protocol.url(sim.url("binance")), timeout=5)
    try:
        out = ParsedRows()
        for _ in range(50):
            assert protocol.parse(ws.recv(), 1, out) is None
        ws.send('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
        while (control := protocol.parse(ws.recv(), 1, out)) is None:
            pass
        assert control is Control.SUBSCRIBED
    finally:
        ws.close()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        rows = [row for row in out.trades if row.symbol == symbol]
        assert as_truth(rows) == expected_rows(sim, symbol, [row.trade_id for row in rows])
        assert [row.trade_id for row in rows] == list(range(rows[0].trade_id, rows[0].trade_id + len(rows)))


def test_garbage_is_malformed_to_the_parser(sim, protocol, connect):
    client = connect()
    client.handle.send_garbage(3)
    out, malformed = ParsedRows(), 0
    while malformed < 3:
        try:
            protocol.parse(client.ws.recv(), 1, out)
        except MalformedFrame:
            malformed += 1
    for _ in range(3):
        protocol.parse(client.ws.recv(), 1, out)
    assert len(out.trades) >= 3  # the stream after the garbage still parses


def test_backfill_pages_parse_to_ground_truth(sim, protocol):
    sim.wait_emitted(30)
    gap = Gap("ETHUSDT", sim.truth("binance", "ETHUSDT")[-30], None)  # well under a page
    request = protocol.backfill_request(gap)
    with urllib.request.urlopen(request.url, timeout=5) as response:
        rows, rest = protocol.parse_backfill(gap, response.read(), 1)
    assert rest is None  # fewer than a full page: caught up
    assert len(rows) >= 30
    assert as_truth(rows) == expected_rows(sim, "ETHUSDT", list(range(gap.first_id, gap.first_id + len(rows))))
