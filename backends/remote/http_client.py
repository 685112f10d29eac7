"""A KServe v2 HTTP/REST client on lean HTTP/1.1 connections (backends/remote/h1.py), with
Triton's binary tensor extension (inputs and outputs as raw bytes after a JSON header) where
the server lists it among its extensions (server metadata, asked once, at the first health
check), else all-JSON bodies (MLServer): one connection pool per endpoint, bounded to the calls
that may be in flight to it, and answers read up to MAX_RESPONSE_BYTES."""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote

from backends.common.tensors import Tensors
from backends.remote.client import CallSpec
from backends.remote.errors import EndpointFailure, http_model_error
from backends.remote.h1 import H1Pool, ProtocolError
from backends.remote.settings import MAX_RESPONSE_BYTES
from backends.remote.wire import BadAnswer, http_json_request, http_outputs, http_request

_HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH_KEY = _HEADER_LENGTH.lower()
_ENDPOINT_STATUSES = frozenset({502, 503, 504})  # the server (or a proxy before it) cannot answer now
_BINARY_EXTENSION = "binary_tensor_data"  # Triton's name for it in the server metadata


class HttpClient:
    def __init__(self, endpoint: str, spec: CallSpec) -> None:
        self.endpoint = endpoint
        self._spec = spec
        settings = spec.settings
        model = f"/v2/models/{quote(settings.remote_model, safe='')}"
        if settings.remote_version:
            model += f"/versions/{settings.remote_version}"
        self._infer_path = f"{model}/infer"
        self._model = model
        self._timeout = settings.timeout_s
        host, _, port = endpoint.rpartition(":")
        self._pool = H1Pool(host.strip("[]"), int(port), spec.connections, MAX_RESPONSE_BYTES)
        self._binary: bool | None = None  # the server takes binary tensors; None: not asked yet

    async def infer(self, inputs: Tensors) -> Tensors:
        spec = self._spec
        if self._binary is False:
            data = [http_json_request(inputs, spec.input_types, spec.outputs)]
            headers = {"Content-Type": "application/json"}
        else:
            data, header_length = http_request(inputs, spec.input_types, spec.outputs)
            headers = {_HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"}
        body, answer_headers = await self._request("POST", self._infer_path, data, headers)
        length = answer_headers.get(_HEADER_LENGTH_KEY)
        try:
            header_length_in = int(length) if length is not None else None
            return http_outputs(body, header_length_in)
        except (BadAnswer, ValueError) as error:
            raise EndpointFailure(self.endpoint, f"bad answer: {error}") from None

    async def check_ready(self) -> None:
        await self._request("GET", "/v2/health/ready")
        await self._request("GET", f"{self._model}/ready")
        if self._binary is None:
            self._binary = await self._takes_binary()

    async def _takes_binary(self) -> bool:
        body, _ = await self._request("GET", "/v2")
        try:
            extensions = json.loads(body).get("extensions")
        except (ValueError, AttributeError):
            raise EndpointFailure(self.endpoint, "bad answer: the server metadata is not a JSON object") from None
        return isinstance(extensions, list) and _BINARY_EXTENSION in extensions

    async def _request(
        self, method: str, path: str, data: Sequence[bytes] = (), headers: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers (names lowercased) of a 200 answer; else the error it says."""
        try:
            answer = await self._pool.request(method, path, headers or {}, data, self._timeout)
        except TimeoutError:
            raise EndpointFailure(self.endpoint, f"timed out after {self._timeout * 1000:.0f} ms") from None
        except (OSError, ProtocolError) as error:
            raise EndpointFailure(self.endpoint, f"{type(error).__name__}: {error}") from None
        if answer.status == 200:
            return answer.body, answer.headers
        message = _error_message(answer.body, answer.status)
        if answer.status in _ENDPOINT_STATUSES:
            raise EndpointFailure(self.endpoint, f"HTTP {answer.status}: {message}")
        raise http_model_error(answer.status, message)

    async def close(self) -> None:
        self._pool.close()


def _error_message(body: bytes, status: int) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return f"HTTP {status}"
