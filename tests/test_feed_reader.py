"""The reader's frame buffer: large reads cut into frames, resumable when the socket runs dry mid-frame."""
import pytest
import websocket

from actors.feed_io import MessageTooBig, _BoundedFrameBuffer


def server_frame(payload: bytes) -> bytes:
    return websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 0, payload).format()


PAYLOADS = [b'{"a":1}', b"x" * 300, b"y" * 70_000]  # 7-bit, 16-bit and 64-bit lengths
WIRE = b"".join(server_frame(p) for p in PAYLOADS)


class Socket:
    """Hands out the given chunks; between them the socket is dry once (BlockingIOError)."""

    def __init__(self, chunks):
        self.script = [c for chunk in chunks for c in (chunk, BlockingIOError())]
        self.reads = 0

    def recv(self, bufsize):
        self.reads += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        assert len(item) <= bufsize
        return item


def read_all(buffer, expected):
    got = []
    while len(got) < expected:
        try:
            got.append(buffer.recv_frame().data)
        except BlockingIOError:
            continue
    return got


@pytest.mark.parametrize("cut", [1, 2, 3, 9, 10, 12, 300, 320, len(WIRE) - 1])
def test_frames_resume_across_a_dry_socket_at_any_cut(cut):
    sock = Socket([WIRE[:cut], WIRE[cut:]])
    assert read_all(_BoundedFrameBuffer(sock.recv, True, 1 << 20), 3) == PAYLOADS


def test_one_read_serves_many_frames():
    sock = Socket([b"".join(server_frame(b"%d" % i) for i in range(500))])
    frames = read_all(_BoundedFrameBuffer(sock.recv, True, 1 << 20), 500)
    assert frames == [b"%d" % i for i in range(500)]
    assert sock.reads == 1


def test_a_frame_above_the_limit_is_refused_from_its_header():
    sock = Socket([WIRE])
    buffer = _BoundedFrameBuffer(sock.recv, True, 1000)
    assert read_all(buffer, 2) == PAYLOADS[:2]
    with pytest.raises(MessageTooBig):
        buffer.recv_frame()
