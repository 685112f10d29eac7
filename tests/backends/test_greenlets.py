"""backends/common/greenlets.py and BLS ``exec()`` on the event loop: synchronous code run in a
greenlet waits for coroutines on the very loop that hosts it (values, errors, cancellation,
context variables), and ``bls.call_sync`` outside such a greenlet on the loop is still refused
(it would wait for itself). In-process, with a real event loop."""

from __future__ import annotations

import asyncio
import contextvars

import numpy as np
import pytest

from backends import bls
from backends.common import greenlets
from backends.common.errors import DeadlineExceeded, FailedPrecondition

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_greenlets_var", default="unset")


async def double_later(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def sync_code(values: list[int]) -> list[int]:
    return [greenlets.wait(double_later(v)) for v in values]


def test_hosted_code_waits_for_coroutines_on_the_loop() -> None:
    assert asyncio.run(greenlets.run(sync_code, [1, 2, 3])) == [2, 4, 6]


def test_hosted_code_sees_the_tasks_context_variables() -> None:
    async def main() -> str:
        VAR.set("from the task")
        return await greenlets.run(lambda: (greenlets.hosted(), VAR.get())[1])

    assert asyncio.run(main()) == "from the task"


def test_an_awaited_failure_is_raised_in_the_hosted_code() -> None:
    async def fail() -> int:
        raise KeyError("target")

    def catches() -> str:
        try:
            greenlets.wait(fail())
        except KeyError as error:
            return f"caught {error}"
        return "not raised"

    assert asyncio.run(greenlets.run(catches)) == "caught 'target'"


def test_cancelling_the_hosting_task_unwinds_the_hosted_code() -> None:
    unwound: list[str] = []

    def waits_forever() -> None:
        try:
            greenlets.wait(asyncio.Event().wait())
        finally:
            unwound.append("finally ran")

    async def main() -> None:
        task = asyncio.ensure_future(greenlets.run(waits_forever))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert unwound == ["finally ran"]


def test_wait_outside_run_is_an_error() -> None:
    assert not greenlets.hosted()
    with pytest.raises(RuntimeError, match=r"outside greenlets\.run"):
        greenlets.wait(double_later(1))


class Doubler:
    """A ModelCaller that answers on the loop: OUT = 2 * IN, or never (model "never")."""

    async def call_model(self, call: bls.ModelCall) -> dict[str, np.ndarray]:
        if call.model == "never":
            await asyncio.Event().wait()
        return {"OUT": 2 * call.inputs["IN"]}


def exec_on_loop(model: str, timeout_us: int = 0) -> dict[str, np.ndarray]:
    return bls.call_sync(bls.ModelCall(model, -1, {"IN": np.arange(3)}), timeout_us)


async def run_model(hosted: bool, model: str = "target", timeout_us: int = 0) -> dict[str, np.ndarray]:
    link = bls.BlsLink(Doubler(), asyncio.get_running_loop(), "caller", 1, timeout_s=10)
    with bls.executing(link):
        if hosted:
            return await greenlets.run(exec_on_loop, model, timeout_us)
        return exec_on_loop(model, timeout_us)


def test_bls_exec_in_a_greenlet_on_the_loop_answers() -> None:
    outputs = asyncio.run(run_model(hosted=True))
    np.testing.assert_array_equal(outputs["OUT"], [0, 2, 4])


def test_bls_exec_in_a_greenlet_answers_deadline_exceeded_by_its_deadline() -> None:
    with pytest.raises(DeadlineExceeded, match=r"got no answer within 0\.05 s"):
        asyncio.run(run_model(hosted=True, model="never", timeout_us=50_000))


def test_bls_exec_on_the_loop_outside_a_greenlet_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match='execution_mode to "thread"'):
        asyncio.run(run_model(hosted=False))
