"""backends/remote/h1.py against small real servers on 127.0.0.1 (asyncio streams): keep-alive
reuse, chunked answers, the body and header bounds, a server that closes its idle connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from backends.remote.h1 import MAX_HEAD_BYTES, Answer, H1Pool, ProtocolError

Reply = Callable[[int], bytes]  # the answer to the n-th request on a connection


@asynccontextmanager
async def serving(reply: Reply, close_after: bool = False) -> AsyncIterator[tuple[int, list[int]]]:
    """A server answering each request with ``reply(n)``; yields its port and the connections'
    request counts."""
    counts: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.append(0)
        index = len(counts) - 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                counts[index] += 1
                writer.write(reply(counts[index]))
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test's server closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], counts
    finally:
        server.close()


def ok(body: bytes) -> Reply:
    return lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-N: %d\r\n\r\n%s" % (len(body), n, body)


async def test_keep_alive_reuses_one_connection() -> None:
    async with serving(ok(b"hello")) as (port, counts):
        pool = H1Pool("127.0.0.1", port, 4, 1 << 20)
        for n in range(1, 4):
            answer = await pool.request("POST", "/v2/models/m/infer", {"X-A": "b"}, [b"bo", b"dy"], 5)
            assert (answer.status, answer.body, answer.headers["x-n"]) == (200, b"hello", str(n))
        assert counts == [3]
        pool.close()


async def test_chunked_answer() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    async with serving(lambda n: chunked) as (port, _):
        answer = await H1Pool("127.0.0.1", port, 1, 1 << 20).request("GET", "/v2/health/ready", {}, (), 5)
        assert answer.body == b"abcde"


async def test_body_over_the_bound_fails_and_drops_the_connection() -> None:
    async with serving(ok(b"x" * 100)) as (port, counts):
        pool = H1Pool("127.0.0.1", port, 1, 99)
        with pytest.raises(ProtocolError, match="exceeds 99"):
            await pool.request("GET", "/", {}, (), 5)
        pool = H1Pool("127.0.0.1", port, 1, 100)
        assert (await pool.request("GET", "/", {}, (), 5)).body == b"x" * 100
        assert len(counts) == 2


async def test_headers_over_the_bound_fail() -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    async with serving(lambda n: huge) as (port, _):
        with pytest.raises(ProtocolError, match="headers exceed"):
            await H1Pool("127.0.0.1", port, 1, 1 << 20).request("GET", "/", {}, (), 5)


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    async with serving(ok(b"a"), close_after=True) as (port, counts):
        pool = H1Pool("127.0.0.1", port, 1, 1 << 20)
        for _ in range(3):
            assert (await pool.request("GET", "/", {}, (), 5)).body == b"a"
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        assert counts == [1, 1, 1]


async def test_connection_close_header_is_honoured() -> None:
    reply: Reply = lambda n: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz"  # noqa: E731
    async with serving(reply) as (port, counts):
        pool = H1Pool("127.0.0.1", port, 1, 1 << 20)
        for _ in range(2):
            assert (await pool.request("GET", "/", {}, (), 5)).body == b"z"
        assert counts == [1, 1]


async def test_refused_connection_is_an_os_error() -> None:
    async with serving(ok(b"")) as (port, _):
        pass
    with pytest.raises(ConnectionRefusedError):
        await H1Pool("127.0.0.1", port, 1, 1 << 20).request("GET", "/", {}, (), 5)


async def test_a_silent_server_times_out_and_the_connection_is_dropped() -> None:
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = H1Pool("127.0.0.1", server.sockets[0].getsockname()[1], 1, 1 << 20)
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/", {}, (), 0.1)
    assert not pool._idle
    never.set()
    server.close()


@asynccontextmanager
async def held(answer_after: Callable[[int], asyncio.Event | None]) -> AsyncIterator[tuple[int, list[int]]]:
    """A server that answers the n-th request it reads (over all connections) once
    ``answer_after(n)`` is set (at once for None); yields its port and, for each request read,
    the number of the connection it came on."""
    seen: list[int] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        connection = connections
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # the tests' requests have no body
                seen.append(connection)
                event = answer_after(len(seen))
                if event is not None:
                    await event.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % (len(seen) % 10))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()


async def a_held_call(pool: H1Pool, reached: asyncio.Event) -> asyncio.Future[Answer]:
    """A long call the server holds, once the server has it."""
    call = asyncio.ensure_future(pool.request("GET", "/", {}, (), 30))
    await asyncio.wait_for(reached.wait(), 10)
    return call


async def cancel(call: asyncio.Future[Answer]) -> None:
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def signalled(reached: asyncio.Event, hold: asyncio.Event) -> Callable[[int], asyncio.Event]:
    """Every request held on ``hold``; ``reached`` set when one arrives."""

    def after(n: int) -> asyncio.Event:
        reached.set()
        return hold

    return after


async def test_a_short_call_times_out_before_a_longer_one_started_first() -> None:
    """The pool's calls share one timer: a later call with a nearer deadline still ends on time."""
    never, reached = asyncio.Event(), asyncio.Event()
    async with held(signalled(reached, never)) as (port, seen):
        pool = H1Pool("127.0.0.1", port, 2, 1 << 20)
        long = await a_held_call(pool, reached)
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", {}, (), 0.2)
        assert seen == [1, 2]  # the short call was sent, on a second connection
        assert not long.done()
        await cancel(long)
        never.set()


async def test_an_answered_calls_deadline_does_not_end_the_next_call_on_its_connection() -> None:
    """A connection reused after a short call: the short call's deadline passes while the next
    (longer) call on the same connection waits for its answer, which still arrives."""
    second = asyncio.Event()
    async with held(lambda n: second if n == 2 else None) as (port, seen):
        pool = H1Pool("127.0.0.1", port, 1, 1 << 20)
        assert (await pool.request("GET", "/", {}, (), 0.2)).body == b"1"
        call = asyncio.ensure_future(pool.request("GET", "/", {}, (), 30))
        await asyncio.sleep(0.4)  # past the first call's deadline
        assert not call.done()
        second.set()
        assert (await call).body == b"2"
        assert seen == [1, 1]  # both calls on the first connection
        pool.close()


async def test_a_call_waiting_for_a_connection_times_out_without_reaching_the_server() -> None:
    never, reached = asyncio.Event(), asyncio.Event()
    async with held(signalled(reached, never)) as (port, seen):
        pool = H1Pool("127.0.0.1", port, 1, 1 << 20)
        first = await a_held_call(pool, reached)
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", {}, (), 0.1)
        assert seen == [1]
        await cancel(first)
        never.set()
