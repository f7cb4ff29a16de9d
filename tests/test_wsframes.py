"""The reader's WebSocket decoder: server frames cut from arbitrary chunks, fragments joined, bad streams refused."""
import pytest
import websocket
from hypothesis import given
from hypothesis import strategies as st

from marketfeed.feeds.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    MessageTooBig,
    ProtocolViolation,
)


def frame(payload: bytes, opcode: int = OP_TEXT, fin: int = 1, rsv1: int = 0, mask: int = 0) -> bytes:
    """A frame as websocket-client encodes it (the encoder is independent of the decoder under test)."""
    abnf = websocket.ABNF(fin, rsv1, 0, 0, opcode, mask, payload)
    if mask:
        abnf.get_mask_key = lambda n: b"\x01\x02\x03\x04"
    return abnf.format()


def decode_in_chunks(wire: bytes, cuts: list[int], limit: int = 1 << 20) -> list[tuple[int, bytes]]:
    decoder, messages, start = FrameDecoder(limit), [], 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        messages += decoder.feed(wire[start:cut])
        start = cut
    return messages


PAYLOADS = [b'{"a":1}', b"x" * 300, b"y" * 70_000]  # 7-bit, 16-bit and 64-bit lengths
WIRE = b"".join(frame(p) for p in PAYLOADS)


@pytest.mark.parametrize("cut", [1, 2, 3, 9, 10, 12, 300, 320, len(WIRE) - 1])
def test_messages_resume_across_chunks_at_any_cut(cut):
    assert decode_in_chunks(WIRE, [cut]) == [(OP_TEXT, p) for p in PAYLOADS]


def test_one_chunk_serves_many_frames():
    wire = b"".join(frame(b"%d" % i) for i in range(500))
    assert FrameDecoder(1 << 20).feed(wire) == [(OP_TEXT, b"%d" % i) for i in range(500)]


messages = st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.binary(max_size=400),
                              st.integers(1, 4), st.booleans()), max_size=12)


@given(messages, st.lists(st.integers(0, 6000), max_size=8))
def test_any_stream_of_fragmented_messages_and_pings_decodes_exactly(stream, cuts):
    wire, expected = b"", []
    for opcode, payload, pieces, ping_inside in stream:
        size = -(-len(payload) // pieces) or 1
        parts = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
        for k, part in enumerate(parts):
            wire += frame(part, opcode if k == 0 else OP_CONTINUATION, fin=int(k == len(parts) - 1))
            if ping_inside and k < len(parts) - 1:  # control frames may come between fragments
                wire += frame(b"hb", OP_PING)
                expected.append((OP_PING, b"hb"))
        expected.append((opcode, payload))
    assert decode_in_chunks(wire, [c for c in cuts if c < len(wire)]) == expected


def test_a_frame_above_the_limit_is_refused_from_its_header():
    decoder, two = FrameDecoder(1000), len(frame(PAYLOADS[0])) + len(frame(PAYLOADS[1]))
    assert decoder.feed(WIRE[:two]) == [(OP_TEXT, p) for p in PAYLOADS[:2]]
    with pytest.raises(MessageTooBig):
        decoder.feed(WIRE[two:two + 10])  # header only: the 70 kB payload is never waited for


def test_a_fragmented_message_above_the_limit_is_refused():
    wire = b"".join(frame(b"z" * 400, OP_TEXT if k == 0 else OP_CONTINUATION, fin=0) for k in range(3))
    with pytest.raises(MessageTooBig):
        FrameDecoder(1000).feed(wire)


@pytest.mark.parametrize("wire", [
    frame(b"hi", mask=1),  # servers never mask
    frame(b"hi", rsv1=1),  # no extension was negotiated
    bytes([0x83, 2]) + b"hi",  # reserved opcode 0x3 (websocket-client refuses to encode it)
    frame(b"hi", OP_CONTINUATION),  # nothing to continue
    frame(b"hi", fin=0) + frame(b"again"),  # a new message inside a fragmented one
    frame(b"x" * 126, OP_PING),  # control payloads are at most 125 bytes
    frame(b"bye", OP_CLOSE, fin=0),  # control frames are never fragmented
])
def test_protocol_violations_are_refused(wire):
    with pytest.raises(ProtocolViolation):
        FrameDecoder(1 << 20).feed(wire)


@pytest.mark.parametrize("bad, refusal", [
    (frame(b"hi", mask=1), ProtocolViolation),
    (frame(b"hi", rsv1=1), ProtocolViolation),
    (frame(b"x" * 2000), MessageTooBig),
], ids=["masked", "reserved_bits", "oversize"])
def test_a_refused_frame_carries_the_messages_cut_before_it_from_the_same_bytes(bad, refusal):
    decoder = FrameDecoder(1000)
    assert decoder.feed(frame(b"first")[:3]) == []  # a frame begun in an earlier chunk
    with pytest.raises(refusal) as refused:
        decoder.feed(frame(b"first")[3:] + frame(b"ping", OP_PING) + frame(b"second") + bad + frame(b"after"))
    assert refused.value.messages == [(OP_TEXT, b"first"), (OP_PING, b"ping"), (OP_TEXT, b"second")]
