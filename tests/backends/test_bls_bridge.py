"""backends/bls.py ``Streamed``: a streamed BLS call pulled from a model's thread takes the
server loop's answers one at a time (nothing fetched ahead), and cancelling it closes the
target's stream, in-process with a real event loop on its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from backends import bls
from backends.common.errors import NotFound
from backends.common.streaming import Answer


class Target:
    """A stream_model whose generator counts what it produced and whether it was closed."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.produced = 0
        self.closed = threading.Event()

    async def call_model(self, call: bls.ModelCall) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def stream_model(self, call: bls.ModelCall) -> AsyncIterator[Answer]:
        if call.model != "target":
            raise NotFound(f"unknown model '{call.model}'")
        try:
            for index in range(self.count):
                self.produced += 1
                yield Answer({"OUT": np.array([index])})
            yield Answer({}, final=True)
        finally:
            self.closed.set()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@contextlib.contextmanager
def open_stream(loop: asyncio.AbstractEventLoop, target: Target, model: str = "target") -> Iterator[bls.Streamed]:
    """A streamed call made inside a model's execute (which it must not outlive)."""
    with bls.executing(bls.BlsLink(target, loop, "caller", 1, timeout_s=10)):
        yield bls.stream(bls.ModelCall(model, -1, {}))


def test_answers_are_pulled_one_at_a_time(loop: asyncio.AbstractEventLoop) -> None:
    target = Target(1000)
    with open_stream(loop, target) as stream:
        for index in range(3):
            answer = stream.next_sync()
            assert answer is not None
            assert int(answer.outputs["OUT"][0]) == index
            assert target.produced == index + 1  # nothing buffered ahead of the reader
        stream.cancel()
    assert target.closed.wait(10)
    assert target.produced == 3


def test_the_stream_ends_after_its_final_answer(loop: asyncio.AbstractEventLoop) -> None:
    with open_stream(loop, Target(2)) as stream:
        answers = [stream.next_sync() for _ in range(4)]
    assert [a is not None and a.final for a in answers[:3]] == [False, False, True]
    assert answers[3] is None


def test_leaving_execute_cancels_an_unfinished_stream(loop: asyncio.AbstractEventLoop) -> None:
    target = Target(1000)
    keep = []
    with bls.executing(bls.BlsLink(target, loop, "caller", 1, timeout_s=10)):
        stream = bls.stream(bls.ModelCall("target", -1, {}))
        keep.append(stream)  # still referenced: only leaving execute closes it
        assert stream.next_sync() is not None
    assert target.closed.wait(10)


def test_a_failing_start_is_a_final_error_answer(loop: asyncio.AbstractEventLoop) -> None:
    with open_stream(loop, Target(1), model="missing") as stream:
        answer = stream.next_sync()
        assert answer is not None
        assert answer.final
        assert isinstance(answer.error, NotFound)
        assert stream.next_sync() is None
