"""bytes_upper for MLServer: OUTPUT0 = INPUT0 (BYTES, [-1, 4]) upper-cased, OUTPUT1 = the byte
length of each element (INT32). The tensors are read and written as MLServer's plain data lists
(its NumpyCodec reads BYTES as fixed-size elements). MLServer's adaptive batcher
(model-settings.json) merges the requests that wait together before predict() sees them."""

from __future__ import annotations

from typing import Any

from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput  # type: ignore[import-not-found]


def _flat(data: Any) -> list[bytes]:
    items = getattr(data, "root", data)  # TensorData, or a list
    flat: list[bytes] = []
    for item in items:
        if isinstance(item, list):
            flat.extend(_flat(item))
        else:
            flat.append(item.encode() if isinstance(item, str) else bytes(item))
    return flat


class BytesUpper(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = payload.inputs[0]
        flat = _flat(tensor.data)
        shape = list(tensor.shape)
        upper = ResponseOutput(name="OUTPUT0", datatype="BYTES", shape=shape, data=[v.upper() for v in flat])
        lengths = ResponseOutput(name="OUTPUT1", datatype="INT32", shape=shape, data=[len(v) for v in flat])
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=[upper, lengths])
