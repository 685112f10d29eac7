"""identity_fp32 for MLServer: OUTPUT0 is INPUT0 (FP32, [-1, 16]). MLServer's adaptive batcher
(model-settings.json: up to 64 requests, 1 ms) merges the requests that wait together before
predict() sees them, and splits the answer again."""

from __future__ import annotations

from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]


class IdentityFP32(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("OUTPUT0", array)],
        )
