"""The HTTP endpoints against hostile local clients: floods of idle sockets, half requests, slow loris,
clients that vanish, a failing handler. The server runs in this process so its threads, descriptors and
stderr can be watched (capfd captures file descriptor 2, where tracebacks would land)."""
import http.client
import logging
import resource
import selectors
import socket
import threading
import time

import psutil
import pytest

from marketfeed.telemetry.http import LIMITS, Limits, OpsServer
from tests.support.polling import poll

FLOOD = 1000
ANSWER_WITHIN_S = 2.0  # 2 shared cores, other tests running: generous, yet far below the ~7 s measured before


def fresh_report():
    return {"status": "ok", "alerts": []}, time.monotonic()


@pytest.fixture
def start():
    servers = []

    def start(limits: Limits = LIMITS, latest=fresh_report) -> OpsServer:
        servers.append(OpsServer("127.0.0.1:0", latest, 10.0, limits).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, float]:
    """(status, body, seconds taken) of one GET on a new connection."""
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - began
    finally:
        conn.close()


def connect(port: int, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if send:
        sock.sendall(send)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed it (EOF or reset); what it said before is read and dropped."""
    sock.setblocking(False)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def enough_descriptors(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= n, f"cannot raise the descriptor limit to {n}"


def test_a_thousand_idle_clients_take_no_thread_each_and_do_not_stall_a_scrape(start, capfd, caplog):
    enough_descriptors(FLOOD + LIMITS.max_connections + 200)
    threads = threading.active_count()
    server = start()
    assert get(server.port, "/metrics")[0] == 200
    me = psutil.Process()
    descriptors = me.num_fds()

    clients, most_threads = [], 0
    for i in range(FLOOD):  # idle ones, and every third has sent half a request line
        clients.append(connect(server.port, b"GET /metr" if i % 3 == 0 else b""))
        if i % 50 == 0:
            most_threads = max(most_threads, threading.active_count())
            status, _, took = get(server.port, "/health")
            assert (status, took < ANSWER_WITHIN_S) == (200, True), f"/health after {i} idle clients: {took:.2f}s"
    for path in ("/metrics", "/health"):
        status, _, took = get(server.port, path)
        assert status == 200 and took < ANSWER_WITHIN_S, f"{path} with {FLOOD} idle clients open: {took:.2f}s"
    assert b"process_open_fds" in get(server.port, "/metrics")[1]

    # The server's side of the flood: at most its connection cap, and never a thread per client.
    assert most_threads <= threads + 1 + LIMITS.workers, f"{most_threads - threads} server threads during the flood"
    held = me.num_fds() - descriptors - FLOOD
    assert held <= LIMITS.max_connections + 4, f"server holds {held} client sockets"

    # They vanish: half politely, half with a reset (SO_LINGER 0), as killed clients do.
    for i, sock in enumerate(clients):
        if i % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    poll(lambda: me.num_fds() <= descriptors, 10, "the server to close its sides")
    assert get(server.port, "/metrics")[0] == 200
    assert capfd.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_slow_and_silent_clients_are_dropped_after_the_header_timeout(start):
    server = start()
    timeout = LIMITS.header_timeout_s
    began = time.monotonic()
    silent = [connect(server.port) for _ in range(20)]
    halves = [connect(server.port, b"GET /health HTTP/1.1\r\nHo") for _ in range(20)]
    loris = connect(server.port)
    said = b""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100
    ready = selectors.DefaultSelector()
    ready.register(loris, selectors.EVENT_READ)
    for byte in request:  # one header byte a second, until the server closes the connection
        try:
            loris.send(bytes([byte]))
            if ready.select(1.0):  # the pace of the attack, cut short only by the server speaking
                if not (data := loris.recv(4096)):
                    break
                said += data
        except (BrokenPipeError, ConnectionResetError):
            break
    dropped_after = time.monotonic() - began
    assert said.startswith(b"HTTP/1.1 408 "), said
    assert timeout - 0.5 <= dropped_after <= timeout + 2.0, f"dropped after {dropped_after:.2f}s"

    # Meanwhile the silent and the half-sent ones went too, at the same deadline.
    poll(lambda: all(closed_by_peer(s) for s in silent + halves), 2.0, "idle clients dropped")
    assert get(server.port, "/health")[0] == 200
    for sock in [*silent, *halves, loris]:
        sock.close()


def test_a_kept_alive_connection_serves_many_requests_then_idles_out(start):
    server = start(Limits(idle_timeout_s=1.0))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for path in ("/health", "/metrics", "/nowhere", "/health"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == (404 if path == "/nowhere" else 200)
    sock = conn.sock
    assert sock is not None
    answered = time.monotonic()
    poll(lambda: closed_by_peer(sock), 5, "the idle keep-alive close")
    assert 1.0 - 0.1 <= time.monotonic() - answered <= 1.0 + 1.5
    conn.close()


def test_at_the_cap_the_longest_waiting_idle_client_makes_room(start):
    server = start(Limits(max_connections=8))
    idle = [connect(server.port) for _ in range(8)]
    assert get(server.port, "/health")[0] == 200  # a newcomer is served at once
    poll(lambda: closed_by_peer(idle[0]), 2, "the oldest idle client closed")
    assert not any(closed_by_peer(s) for s in idle[1:])  # only as many as made room
    for sock in idle:
        sock.close()


def test_when_every_slot_is_being_answered_a_newcomer_gets_503_at_once(start):
    release, entered = threading.Event(), []

    def stuck():  # a report source that hangs: every slot is then in a worker
        entered.append(1)
        release.wait(10)
        return fresh_report()

    server = start(Limits(max_connections=2, workers=2), latest=stuck)
    answers: list[int] = []
    waiters = [threading.Thread(target=lambda: answers.append(get(server.port, "/health")[0])) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    try:
        poll(lambda: len(entered) == 2, 5, "both slots being answered")
        began = time.monotonic()
        sock = connect(server.port)  # it need not say anything: the refusal comes with the accept
        said = b""
        while data := sock.recv(4096):
            said += data
        sock.close()
        assert said.startswith(b"HTTP/1.1 503 ") and b"too many connections" in said, said
        assert time.monotonic() - began < ANSWER_WITHIN_S
    finally:
        release.set()
        for waiter in waiters:
            waiter.join(10)
    assert answers == [200, 200]


def test_a_failing_handler_is_a_500_and_a_json_log_event_not_a_traceback(start, capfd, caplog):
    def broken():
        raise RuntimeError("report source broken")

    server = start(latest=broken)
    with caplog.at_level(logging.ERROR, logger="marketfeed.http"):
        status, _, _ = get(server.port, "/health")
    assert status == 500
    (record,) = [r for r in caplog.records if r.name == "marketfeed.http"]
    assert record.getMessage() == "http_handler_failed" and record.exc_info and record.exc_info[0] is RuntimeError
    assert get(server.port, "/metrics")[0] == 200  # and the server runs on
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("sent, status", [
    (b"garbage\r\n\r\n", 400),
    (b"GET /health HTTP/2.0\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\n folded: header\r\n\r\n", 400),
    (b"GET /health HTTP/1.1\r\nX: " + b"y" * (LIMITS.max_head_bytes + 1), 431),
    (b"POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", 405),
])
def test_malformed_requests_get_a_status_and_a_close(start, sent, status):
    server = start()
    sock = connect(server.port)
    try:
        sock.sendall(sent)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before it was all sent (431): the answer may still be waiting
    answer = b""
    try:
        while data := sock.recv(65536):
            answer += data
    except ConnectionResetError:
        pass  # what came before the reset is the answer
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close" in answer, answer
    sock.close()
