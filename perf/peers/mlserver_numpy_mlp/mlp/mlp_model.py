"""numpy_mlp for MLServer: perf/peers/numpy_mlp.py (FP32 INPUT0 [-1, 256] -> OUTPUT0 [-1, 16])
as a custom runtime. MLServer's adaptive batcher (model-settings.json: up to 64 requests,
max_batch_time from $NUMPY_MLP_QUEUE_DELAY_US through serve_numpy_mlp.py) merges the requests that wait
together before predict() sees them, and splits the answer again. predict() also records the
rows it got in the custom metric ``numpy_mlp_batch_rows`` (a histogram on the metrics port:
its sum over its count is the mean batch size). numpy_mlp is found through PYTHONPATH, which
serve_numpy_mlp.py sets."""

from __future__ import annotations

from mlserver import MLModel, log  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]
from numpy_mlp import OUTPUT, NumpyMLP


class NumpyMLPModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        self._mlp = NumpyMLP()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0])
        log(numpy_mlp_batch_rows=len(rows))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(OUTPUT, self._mlp(rows))],
        )
