"""AnswerStream (backends/common/streaming.py), in-process: the bound holds a producer on a
thread or on the loop until the reader takes an answer; cancelling wakes a waiting producer,
drops what is queued and runs the hooks; a send after the final answer is refused; and the
clipperd generator pump (backends/python_streams.py) closes a generator whose reader left."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator

import numpy as np
import pytest

from backends.common.errors import InvalidArgument
from backends.common.streaming import Answer, AnswerStream, StreamClosed
from backends.python_streams import start_streams

pytestmark = pytest.mark.timeout(30)


def _answer(value: int, final: bool = False) -> Answer:
    return Answer({"OUT": np.array([value])}, final=final)


async def test_a_thread_producer_waits_for_room() -> None:
    stream = AnswerStream(capacity=2)
    sent: list[int] = []
    two_sent = threading.Event()

    def produce() -> None:
        for value in range(5):
            stream.put(_answer(value, final=value == 4))
            sent.append(value)
            if len(sent) == 2:
                two_sent.set()

    thread = threading.Thread(target=produce)
    thread.start()
    assert await asyncio.to_thread(two_sent.wait, 10)
    await asyncio.sleep(0.2)  # room for a third send, were the bound not holding it
    assert len(sent) == 2, "the producer passed the bound"
    got = [int((await stream.get()).outputs["OUT"][0]) for _ in range(5)]
    thread.join(10)
    assert got == [0, 1, 2, 3, 4]
    assert stream.finished


async def test_a_loop_producer_awaits_room_and_cancel_wakes_it() -> None:
    stream = AnswerStream(capacity=1)
    await stream.put_async(_answer(0))
    blocked = asyncio.ensure_future(stream.put_async(_answer(1)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    hooked: list[str] = []
    stream.on_cancel(lambda: hooked.append("stopped"))
    stream.cancel()
    await asyncio.wait_for(blocked, 5)  # woken, its answer dropped
    assert stream.cancelled
    assert hooked == ["stopped"]


async def test_cancel_wakes_a_thread_producer() -> None:
    stream = AnswerStream(capacity=1)
    stream.put(_answer(0))
    done = threading.Event()

    def produce() -> None:
        stream.put(_answer(1))  # blocks: full
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    await asyncio.sleep(0.05)
    assert not done.is_set()
    stream.cancel()
    thread.join(5)
    assert done.is_set()


async def test_no_send_after_the_final_answer() -> None:
    stream = AnswerStream()
    stream.put(_answer(0, final=True))
    with pytest.raises(StreamClosed, match="final answer was already sent"):
        stream.put(_answer(1))
    stream.fail(InvalidArgument("late"))  # a failure after the end changes nothing
    assert (await stream.get()).final


class _Generators:
    """A clipperd decoupled model whose generator records that it was closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def execute(self, inputs: dict[str, np.ndarray]) -> Generator[dict[str, np.ndarray], None, None]:
        try:
            value = 0
            while True:
                yield {"OUT": np.array([value])}
                value += 1
        finally:
            self.closed.set()


async def test_a_generator_is_closed_when_its_reader_leaves() -> None:
    model = _Generators()
    stream = AnswerStream(capacity=2)
    pump = threading.Thread(target=start_streams, args=(model, [{}], [stream], str))
    pump.start()
    assert int((await stream.get()).outputs["OUT"][0]) == 0
    assert int((await stream.get()).outputs["OUT"][0]) == 1
    stream.cancel()
    pump.join(10)
    assert model.closed.is_set()


async def test_a_generator_error_ends_its_request() -> None:
    class Broken:
        def execute(self, inputs: dict[str, np.ndarray]) -> Generator[dict[str, np.ndarray], None, None]:
            yield {"OUT": np.array([1])}
            raise ValueError("broken on purpose")

    stream = AnswerStream()
    await asyncio.to_thread(start_streams, Broken(), [{}], [stream], lambda exc: f"failed: {exc}")
    first, last = await stream.get(), await stream.get()
    assert not first.final
    assert last.final
    assert last.error is not None
    assert "failed: broken on purpose" in last.error.message
