"""The repeat model as a clipperd Python model: a decoupled model's ``execute`` is called once
per request and here is an async generator, one output dict per answer (backends/python_streams.py).
It runs on the event loop, so ``await asyncio.sleep`` between answers holds no thread; when the
client goes away the generator is closed at its ``await`` or ``yield``."""

import asyncio

import numpy as np


class Model:
    async def execute(self, inputs):
        values, delays = inputs["IN"], inputs["DELAY"]
        if values.shape != delays.shape:
            raise ValueError(
                f"IN and DELAY must have the same shape, got {list(values.shape)} and {list(delays.shape)}"
            )
        for index, (value, delay) in enumerate(zip(values.tolist(), delays.tolist(), strict=True)):
            if delay:
                await asyncio.sleep(delay / 1000)
            yield {"OUT": np.array([value], dtype=np.int32), "IDX": np.array([index], dtype=np.uint32)}
