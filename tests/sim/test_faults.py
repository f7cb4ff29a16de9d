"""Each fault does what it says, on one connection or on every connection of an exchange."""
import itertools
import struct
import time

import orjson
import pytest
import websocket
from simclient import PING_INTERVAL, PONG_TIMEOUT, by_symbol, get
from websocket import ABNF

from marketfeed.sim import Simulator


def test_skipped_trades_are_missing_from_the_stream_but_served_over_rest(sim, connect):
    client = connect()
    before = client.trades(4)
    client.handle.skip_next(3, "BTCUSDT")
    ids = by_symbol(before + client.trades(40))
    skipped = client.handle.counters.skipped_ids
    assert len(skipped) == 3 and skipped == list(range(skipped[0], skipped[0] + 3))
    btc = ids["BTCUSDT"]
    assert not set(skipped) & set(btc)
    assert sorted(btc + skipped) == list(range(btc[0], btc[-1] + 1))  # the hole is exactly the skipped ids
    assert ids["ETHUSDT"] == list(range(ids["ETHUSDT"][0], ids["ETHUSDT"][-1] + 1))
    page = get(f"{sim.rest_url('binance')}/api/v3/historicalTrades?symbol=BTCUSDT&fromId={skipped[0]}&limit=3")[1]
    assert [t["id"] for t in page] == skipped


def test_duplicates_arrive_twice_in_a_row(connect):
    client = connect()
    client.trades(2)
    client.handle.duplicate_next(4)
    ids = [(e["s"], e["t"]) for e in client.trades(30)]
    repeats = [a for a, b in itertools.pairwise(ids) if a == b]
    assert len(repeats) == 4 and len(set(ids)) == len(ids) - 4
    assert client.handle.counters.duplicates_sent == 4


def test_garbage_frames_arrive_and_the_stream_goes_on(connect):
    client = connect()
    client.handle.send_garbage(3)
    frames: list[str] = []
    while len(frames) < 3:
        frame = client.ws.recv()
        assert isinstance(frame, str)  # garbage goes out in text frames, as trades do
        try:
            if "data" in orjson.loads(frame):
                continue  # a trade
        except orjson.JSONDecodeError:
            pass
        frames.append(frame)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frames[0])
    assert frames[1].startswith('{"stream":"') and frames[1] != frames[0]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frames[1])
    assert isinstance(orjson.loads(frames[2]), dict)
    assert len(client.trades(5)) == 5 and client.handle.counters.garbage_sent == 3


def test_drop_ends_the_connection_without_a_close_frame(sim, connect):
    client = connect()
    client.trades(2)
    client.handle.drop()
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            opcode, _ = client.ws.recv_data_frame(True)
            assert opcode != ABNF.OPCODE_CLOSE
    sim.wait_until(lambda: client.handle.closed)
    assert client.handle.close_code == 1006


def test_stall_sends_nothing_not_even_pings_then_delivers_what_it_held(sim, connect):
    client = connect()
    client.trades(2)
    handle = client.handle
    handle.stall(0.8)
    started = time.monotonic()
    in_flight, received = handle.counters.frames_sent - 2, 0  # written before the stall took effect
    arrivals = []
    while received <= in_flight:  # the frames in flight, then the first one held back
        opcode = client.ws.recv_data_frame(True)[0]
        arrivals.append(time.monotonic() - started)
        received += opcode == ABNF.OPCODE_TEXT
    after_in_flight = [t for t in arrivals if t > 0.05]  # in-flight frames (and pings) land within ms
    assert after_in_flight and after_in_flight[0] >= 0.75
    assert not handle.stalled
    ids = by_symbol(client.trades(40))
    assert all(v == list(range(v[0], v[-1] + 1)) for v in ids.values())  # held back, not lost


def test_stall_until_resumed(sim, connect):
    client = connect()
    before = client.trades(2)
    sim.faults("binance").stall_all()
    assert client.handle.stalled
    sim.faults("binance").resume_all()
    ids = by_symbol(before + client.trades(20))
    assert not client.handle.stalled
    assert all(v == list(range(v[0], v[-1] + 1)) for v in ids.values())


def test_slow_consumer_is_closed_with_1008(connect):
    client = connect()
    client.handle.disconnect_slow_consumer()
    while (frame := client.ws.recv_data_frame(True))[0] != ABNF.OPCODE_CLOSE:
        pass
    assert struct.unpack("!H", frame[1].data[:2])[0] == 1008


def test_a_client_over_the_write_buffer_limit_is_closed_with_1008():
    with Simulator(["binance"], ["BTCUSDT"], rate=100, write_buffer_limit=-1) as every_client_is_too_slow:
        ws = websocket.create_connection(every_client_is_too_slow.url("binance") + "/ws/btcusdt@trade", timeout=5)
        while (frame := ws.recv_data_frame(True))[0] != ABNF.OPCODE_CLOSE:
            pass
        assert struct.unpack("!H", frame[1].data[:2])[0] == 1008
        ws.shutdown()


def test_exchange_wide_faults_hit_every_connection(sim, connect):
    clients = [connect(), connect("/ws/btcusdt@trade")]
    assert sim.faults("binance").drop_all() >= 2
    sim.wait_until(lambda: all(c.handle.closed for c in clients))


def test_pings_arrive_and_a_client_that_pongs_stays(connect):
    client = connect()
    started = time.monotonic()
    pings = 0
    while time.monotonic() - started < PING_INTERVAL * 2 + PONG_TIMEOUT:
        pings += client.ws.recv_data_frame(True)[0] == ABNF.OPCODE_PING  # websocket-client pongs by itself
    assert pings >= 2 and not client.handle.closed


def test_a_client_that_does_not_pong_is_disconnected(sim, connect):
    client = connect()
    started = time.monotonic()
    opcodes = []
    try:
        while ABNF.OPCODE_CLOSE not in opcodes:
            opcodes.append(client.ws.recv_frame().opcode)  # raw frames: no automatic pong
    except websocket.WebSocketConnectionClosedException:
        pass
    assert ABNF.OPCODE_PING in opcodes
    assert time.monotonic() - started < PING_INTERVAL + PONG_TIMEOUT + 1.0
    client.ws.shutdown()  # rather than have the server wait out its close timeout
    sim.wait_until(lambda: client.handle.closed)


def test_muted_replies_leave_requests_unanswered_while_trades_flow(connect):
    client = connect()
    request = orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}).decode()

    def replies_among_next(n: int) -> list[dict]:
        client.ws.send(request)
        frames = [client.recv_json() for _ in range(n)]
        assert any("data" in f for f in frames)  # the stream goes on either way
        return [f for f in frames if f.get("id") == 7]

    assert replies_among_next(60) == [{"result": ["btcusdt@trade", "ethusdt@trade"], "id": 7}]
    client.handle.mute_replies()  # returns once applied on the simulator's loop
    assert replies_among_next(60) == []
