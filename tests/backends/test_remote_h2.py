"""backends/remote/h2.py against small scripted HTTP/2 servers on 127.0.0.1 (asyncio streams,
hpack for their headers): a well-behaved answer, many calls on one connection, flow control
both ways, and every way a server can misbehave (status errors, GOAWAY, RST_STREAM, frames and
header blocks past the bounds, silence, garbage), each a clear failure within the call's time.
The client against real servers (clipperd, Triton, MLServer) is in test_remote*.py."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import hpack
import pytest

from backends.common.http2 import PREFACE, ErrorCode, Flag, FrameType, frame, goaway, rst_stream, window_update
from backends.remote.h2 import MAX_FRAME, GrpcStatus, H2Channel, ProtocolError, RefusedCall, request_head

OVER = MAX_FRAME + 1
BAD_HPACK = b"\xff\xff\xff\xff\x0f"  # an index past any table
HEAD = request_head("/inference.GRPCInferenceService/ModelInfer", "127.0.0.1:1", 5.0)


class Peer:
    """The server's side of one connection: reads the client's frames, writes scripted ones."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.encoder.header_table_size = 0  # as the client's SETTINGS_HEADER_TABLE_SIZE asks
        self.frames: list[tuple[int, int, int, bytes]] = []

    async def start(self) -> None:
        assert await self.reader.readexactly(len(PREFACE)) == PREFACE
        self.writer.write(frame(FrameType.SETTINGS, 0, 0, b""))

    async def read_frame(self) -> tuple[int, int, int, bytes]:
        head = await self.reader.readexactly(9)
        high, low, kind, flags, stream_id = struct.unpack(">HBBBI", head)
        payload = await self.reader.readexactly((high << 8) | low)
        self.frames.append((kind, flags, stream_id, payload))
        return kind, flags, stream_id, payload

    async def read_call(self) -> tuple[int, bytes]:
        """The next call's stream id and body (after its END_STREAM)."""
        body, stream = b"", 0
        while True:
            kind, flags, stream_id, payload = await self.read_frame()
            if kind == FrameType.HEADERS:
                stream = stream_id
            if kind == FrameType.DATA:
                body += payload
            if kind in (FrameType.HEADERS, FrameType.DATA) and flags & Flag.END_STREAM:
                return stream, body

    def headers(self, stream_id: int, fields: list[tuple[str, str]], end: bool = False) -> None:
        flags = Flag.END_HEADERS | (Flag.END_STREAM if end else 0)
        self.writer.write(frame(FrameType.HEADERS, flags, stream_id, self.encoder.encode(fields)))

    def answer(self, stream_id: int, message: bytes) -> None:
        self.headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        self.writer.write(frame(FrameType.DATA, 0, stream_id, struct.pack(">BI", 0, len(message)) + message))
        self.headers(stream_id, [("grpc-status", "0")], end=True)


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[H2Channel, list[Peer]]]:
    """A server running ``script`` on each connection; yields a channel to it and its peers."""
    peers: list[Peer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        peers.append(peer)
        try:
            await peer.start()
            await script(peer)
            await writer.drain()
            await reader.read()  # until the client leaves
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    channel = H2Channel("127.0.0.1", server.sockets[0].getsockname()[1], 8, 1 << 20)
    try:
        yield channel, peers
    finally:
        channel.close()
        server.close()


async def echo(peer: Peer) -> None:
    while True:
        stream_id, body = await peer.read_call()
        peer.answer(stream_id, body[5:])


async def test_a_call_is_answered_and_the_connection_reused() -> None:
    async with serving(echo) as (channel, peers):
        for n in range(3):
            assert await channel.call(HEAD, b"hello %d" % n, 5) == b"hello %d" % n
        assert len(peers) == 1


async def test_many_calls_at_once_share_the_connection() -> None:
    async with serving(echo) as (channel, peers):
        answers = await asyncio.gather(*(channel.call(HEAD, b"m%d" % n, 5) for n in range(50)))
        assert answers == [b"m%d" % n for n in range(50)]
        assert len(peers) == 1


async def test_the_request_headers_are_grpcs() -> None:
    async with serving(echo) as (channel, peers):
        await channel.call(HEAD, b"x", 5)
        block = next(p for k, _, _, p in peers[0].frames if k == FrameType.HEADERS)
        fields = {str(n): str(v) for n, v in hpack.Decoder().decode(block, raw=False)}
        assert fields[":method"] == "POST"
        assert fields[":scheme"] == "http"
        assert fields[":path"] == "/inference.GRPCInferenceService/ModelInfer"
        assert (fields["content-type"], fields["te"], fields["grpc-timeout"]) == (
            "application/grpc",
            "trailers",
            "5000m",
        )


async def test_a_large_request_waits_for_the_servers_window() -> None:
    """The server's windows start at 65,535 bytes: the client sends that much, stops (a PING it
    answers comes before any more DATA), and sends the rest once the window opens."""
    sent = bytes(range(256)) * 1024  # 256 KiB

    async def slow_window(peer: Peer) -> None:
        received, stream = b"", 0
        while len(received) < 65_535:
            kind, _flags, stream_id, payload = await peer.read_frame()
            stream = stream_id if kind == FrameType.HEADERS else stream
            received += payload if kind == FrameType.DATA else b""
        assert len(received) == 65_535, "the client sent past the window"
        peer.writer.write(frame(FrameType.PING, 0, 0, b"windowck"))
        while (found := await peer.read_frame())[0] != FrameType.PING:
            assert found[0] != FrameType.DATA, "the client sent past the window"
        rest = len(sent) + 5 - len(received)
        peer.writer.write(window_update(0, rest) + window_update(stream, rest))
        while len(received) < len(sent) + 5:
            kind, _, _, payload = await peer.read_frame()
            received += payload if kind == FrameType.DATA else b""
        peer.answer(stream, received[5:][:10])

    async with serving(slow_window) as (channel, _):
        assert await channel.call(HEAD, sent, 5) == sent[:10]


async def test_a_large_answer_is_acknowledged_as_it_is_read() -> None:
    big = b"z" * (3 << 20)

    async def large(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        peer.headers(stream_id, [(":status", "200")])
        data = struct.pack(">BI", 0, len(big)) + big
        for start in range(0, len(data), 16_384):
            peer.writer.write(frame(FrameType.DATA, 0, stream_id, data[start : start + 16_384]))
        peer.headers(stream_id, [("grpc-status", "0")], end=True)

    async with serving(large) as (channel, _):
        channel_big = H2Channel(*channel_address(channel), 2, 4 << 20)
        try:
            assert await channel_big.call(HEAD, b"", 5) == big
        finally:
            channel_big.close()


def channel_address(channel: H2Channel) -> tuple[str, int]:
    return channel._host, channel._port


async def test_a_grpc_status_keeps_its_code_and_decoded_message() -> None:
    async def refuse(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        fields = [(":status", "200"), ("grpc-status", "3"), ("grpc-message", "bad %E2%9C%93 input")]
        peer.headers(stream_id, fields, end=True)  # trailers-only

    async with serving(refuse) as (channel, _):
        with pytest.raises(GrpcStatus) as caught:
            await channel.call(HEAD, b"x", 5)
        assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "bad \u2713 input")


async def test_an_unknown_status_number_is_unknown() -> None:
    async def odd(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        peer.headers(stream_id, [(":status", "200"), ("grpc-status", "99")], end=True)

    async with serving(odd) as (channel, _):
        with pytest.raises(GrpcStatus, match="UNKNOWN"):
            await channel.call(HEAD, b"x", 5)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda p, s: p.headers(s, [(":status", "404")], end=True), "HTTP status 404"),
        (lambda p, s: p.headers(s, [(":status", "200")], end=True), "without a gRPC status"),
        (
            lambda p, s: p.writer.write(
                frame(FrameType.HEADERS, Flag.END_HEADERS, s, p.encoder.encode([(":status", "200")]))
                + frame(FrameType.DATA, Flag.END_STREAM, s, b"\0\0\0\0\1x")
            ),
            "without a gRPC status",
        ),
        (lambda p, s: p.writer.write(rst_stream(s, ErrorCode.INTERNAL_ERROR)), "RST_STREAM INTERNAL_ERROR"),
    ],
    ids=["http-404", "no-trailers", "data-ends-stream", "reset"],
)
async def test_a_broken_answer_fails_the_call(answer: Callable[[Peer, int], None], match: str) -> None:
    async def broken(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        answer(peer, stream_id)

    async with serving(broken) as (channel, _):
        with pytest.raises(ProtocolError, match=match):
            await channel.call(HEAD, b"x", 5)


async def test_a_malformed_message_fails_the_call() -> None:
    async def compressed(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        peer.headers(stream_id, [(":status", "200")])
        peer.writer.write(frame(FrameType.DATA, 0, stream_id, b"\x01\0\0\0\x01x"))
        peer.headers(stream_id, [("grpc-status", "0")], end=True)

    async with serving(compressed) as (channel, _):
        with pytest.raises(ProtocolError, match="compressed"):
            await channel.call(HEAD, b"x", 5)


async def test_refused_and_going_away_calls_are_refused_and_the_next_call_reconnects() -> None:
    async def refuse_first(peer: Peer) -> None:
        if len(peers) > 1:  # the client's second connection
            await echo(peer)
        stream_id, _ = await peer.read_call()
        peer.writer.write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
        stream_id, _ = await peer.read_call()
        peer.writer.write(goaway(0, ErrorCode.NO_ERROR))  # took none of them
        await echo(peer)

    async with serving(refuse_first) as (channel, peers):
        with pytest.raises(RefusedCall, match="refused"):
            await channel.call(HEAD, b"x", 5)
        with pytest.raises(RefusedCall, match="going away"):
            await channel.call(HEAD, b"x", 5)
        assert await channel.call(HEAD, b"again", 5) == b"again"  # on a new connection
        assert len(peers) == 2


async def test_a_silent_server_times_out_and_the_stream_is_reset() -> None:
    async def silent(peer: Peer) -> None:
        await peer.read_call()
        await peer.read_frame()  # the client's RST_STREAM when it gives up

    async with serving(silent) as (channel, peers):
        with pytest.raises(TimeoutError):
            await channel.call(HEAD, b"x", 0.2)
        for _ in range(100):
            if any(k == FrameType.RST_STREAM for k, *_ in peers[0].frames):
                break
            await asyncio.sleep(0.05)
        kinds = [k for k, *_ in peers[0].frames]
        assert FrameType.RST_STREAM in kinds


async def test_answers_cut_anywhere_are_read_whole() -> None:
    """Frames that arrive in pieces (a byte at a time, or two answers and half of a third in one
    read) are put together before they are read."""

    async def dribble(peer: Peer) -> None:
        stream_id, body = await peer.read_call()
        answer = _answer_bytes(peer, stream_id, body[5:])
        for i in range(len(answer)):
            peer.writer.write(answer[i : i + 1])
            await peer.writer.drain()
            await asyncio.sleep(0)
        ids = [(await peer.read_call())[0] for _ in range(3)]
        answers = b"".join(_answer_bytes(peer, i, b"n%d" % i) for i in ids)
        cut = len(answers) - 7
        peer.writer.write(answers[:cut])
        await peer.writer.drain()
        await asyncio.sleep(0.05)
        peer.writer.write(answers[cut:])
        await echo(peer)

    async with serving(dribble) as (channel, _):
        assert await channel.call(HEAD, b"slowly", 5) == b"slowly"
        calls = [channel.call(HEAD, b"x", 5) for _ in range(3)]
        assert sorted(await asyncio.gather(*calls)) == [b"n3", b"n5", b"n7"]
        assert await channel.call(HEAD, b"after", 5) == b"after"


def _answer_bytes(peer: Peer, stream_id: int, message: bytes) -> bytes:
    """What ``Peer.answer`` writes, as bytes."""
    head = peer.encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
    trailers = peer.encoder.encode([("grpc-status", "0")])
    return (
        frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, head)
        + frame(FrameType.DATA, 0, stream_id, struct.pack(">BI", 0, len(message)) + message)
        + frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, stream_id, trailers)
    )


async def test_calls_beyond_the_streams_wait_their_turn_within_their_time() -> None:
    """With every stream busy (8 here) a call waits: it times out without reaching the server
    when none frees in time, and takes the stream a cancelled call gives back."""
    seen: list[int] = []

    async def hold_eight(peer: Peer) -> None:
        for _ in range(8):
            seen.append((await peer.read_call())[0])  # held, never answered
        while True:
            stream_id, body = await peer.read_call()
            seen.append(stream_id)
            peer.answer(stream_id, body[5:])

    async with serving(hold_eight) as (channel, _):
        held = [asyncio.ensure_future(channel.call(HEAD, b"held", 30)) for _ in range(8)]
        for _ in range(200):
            if len(seen) == 8:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await channel.call(HEAD, b"no stream", 0.2)
        held[0].cancel()
        assert await channel.call(HEAD, b"its turn", 5) == b"its turn"
        assert len(seen) == 9  # the call that timed out waiting never reached the server
        for call in held:
            call.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def test_each_call_times_out_at_its_own_deadline_on_a_shared_timer() -> None:
    """The connection's one timer follows the earliest deadline: a short call made after a long
    one times out first, the long one when its own time is up, and a call answered in time is
    not touched by the others' expiry."""

    async def answer_third(peer: Peer) -> None:
        for _ in range(2):
            await peer.read_call()  # never answered
        stream_id, message = await peer.read_call()
        peer.answer(stream_id, message[5:])
        while True:
            await peer.read_frame()

    async with serving(answer_third) as (channel, _):
        loop = asyncio.get_running_loop()
        start = loop.time()
        long = asyncio.ensure_future(channel.call(HEAD, b"long", 0.6))
        await asyncio.sleep(0.01)
        short = asyncio.ensure_future(channel.call(HEAD, b"short", 0.15))
        await asyncio.sleep(0.01)
        assert await channel.call(HEAD, b"answered", 5) == b"answered"
        with pytest.raises(TimeoutError):
            await short
        assert not long.done()
        with pytest.raises(TimeoutError):
            await long
        assert loop.time() - start >= 0.6 - 0.002  # not before its own deadline (timers round to ms)


@pytest.mark.parametrize(
    ("hostile", "match"),
    [
        (lambda p, s: p.writer.write(struct.pack(">HBBBI", OVER >> 8, OVER & 0xFF, 0, 0, s)), "frame of"),
        (lambda p, s: p.writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\0" * 64), "frame|header|closed"),
        (lambda p, s: p.writer.write(frame(FrameType.HEADERS, 0, s, b"\x88")
                                     + frame(FrameType.CONTINUATION, 0, s, b"\x00" * 16_000) * 6), "header block over"),
        (lambda p, s: p.writer.write(frame(FrameType.HEADERS, Flag.END_HEADERS, s, BAD_HPACK)), "header block"),
        (lambda p, s: p.writer.write(frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, s, b"\0\0\0\2\x88")), "push"),
        (lambda p, s: p.writer.write(frame(FrameType.SETTINGS, 0, 0, b"\0\4\xff\xff\xff\xff")), "initial window"),
    ],
    ids=["oversized-frame", "not-http2", "continuation-flood", "bad-hpack", "push-promise", "window-overflow"],
)  # fmt: skip
async def test_a_hostile_server_ends_its_connection_with_a_clear_error(
    hostile: Callable[[Peer, int], None], match: str
) -> None:
    async def attack(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        hostile(peer, stream_id)

    async with serving(attack) as (channel, _):
        with pytest.raises((ProtocolError, ConnectionError), match=match):
            await channel.call(HEAD, b"x", 5)


async def test_an_answer_past_the_bound_fails_and_the_connection_serves_on() -> None:
    async def large_then_echo(peer: Peer) -> None:
        stream_id, _ = await peer.read_call()
        peer.headers(stream_id, [(":status", "200")])
        peer.writer.write(frame(FrameType.DATA, 0, stream_id, b"\0" * 16_384) * 80)  # 1.25 MiB > 1 MiB
        await echo(peer)

    async with serving(large_then_echo) as (channel, peers):
        with pytest.raises(ProtocolError, match="exceeds"):
            await channel.call(HEAD, b"x", 5)
        assert await channel.call(HEAD, b"next", 5) == b"next"
        assert len(peers) == 1  # the one call failed, not the connection


async def test_the_client_answers_pings() -> None:
    async def ping_first(peer: Peer) -> None:
        stream_id, body = await peer.read_call()
        peer.writer.write(frame(FrameType.PING, 0, 0, b"12345678"))
        while True:
            kind, flags, _, payload = await peer.read_frame()
            if kind == FrameType.PING:
                assert (flags, payload) == (Flag.ACK, b"12345678")
                break
        peer.answer(stream_id, body[5:])

    async with serving(ping_first) as (channel, _):
        assert await channel.call(HEAD, b"pong", 5) == b"pong"


async def test_a_refused_connection_is_an_os_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    channel = H2Channel("127.0.0.1", port, 2, 1 << 20)
    with pytest.raises(OSError, match=r"(?i)refused|connect"):
        await channel.call(HEAD, b"x", 5)


async def test_a_server_that_keeps_a_dynamic_table_against_the_settings_fails_clearly() -> None:
    """The client announces no dynamic table; a server that indexes anyway breaks HPACK."""

    async def indexing(peer: Peer) -> None:
        peer.encoder = hpack.Encoder()  # ignores SETTINGS_HEADER_TABLE_SIZE 0
        while True:
            stream_id, body = await peer.read_call()
            peer.headers(stream_id, [(":status", "200"), ("x-session", "abc")])
            message = body[5:]
            peer.writer.write(frame(FrameType.DATA, 0, stream_id, struct.pack(">BI", 0, len(message)) + message))
            peer.headers(stream_id, [("grpc-status", "0")], end=True)

    async with serving(indexing) as (channel, _):
        assert await channel.call(HEAD, b"first", 5) == b"first"  # its literals are new: still readable
        with pytest.raises(ProtocolError, match="header block"):
            await channel.call(HEAD, b"second", 5)  # now an index into a table the client never kept
