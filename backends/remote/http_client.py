"""A KServe v2 HTTP/REST client on aiohttp, with Triton's binary tensor extension (inputs and
outputs as raw bytes after a JSON header) where the server lists it among its extensions (server
metadata, asked once, at the first health check), else all-JSON bodies (MLServer): one
connection pool per endpoint, bounded to the calls that may be in flight to it, and answers
read up to MAX_RESPONSE_BYTES."""

from __future__ import annotations

import json
from urllib.parse import quote

import aiohttp

from backends.common.tensors import Tensors
from backends.remote.client import CallSpec
from backends.remote.errors import EndpointFailure, http_model_error
from backends.remote.settings import MAX_RESPONSE_BYTES
from backends.remote.wire import BadAnswer, http_json_request, http_outputs, http_request

_HEADER_LENGTH = "Inference-Header-Content-Length"
_ENDPOINT_STATUSES = frozenset({502, 503, 504})  # the server (or a proxy before it) cannot answer now
_CHUNK = 1 << 20
_BINARY_EXTENSION = "binary_tensor_data"  # Triton's name for it in the server metadata


class HttpClient:
    def __init__(self, endpoint: str, spec: CallSpec) -> None:
        self.endpoint = endpoint
        self._spec = spec
        settings = spec.settings
        model = f"/v2/models/{quote(settings.remote_model, safe='')}"
        if settings.remote_version:
            model += f"/versions/{settings.remote_version}"
        self._base = f"http://{endpoint}"
        self._model = model
        self._timeout = settings.timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._binary: bool | None = None  # the server takes binary tensors; None: not asked yet

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use (it belongs to the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._spec.connections, enable_cleanup_closed=True)
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            self._session = aiohttp.ClientSession(self._base, connector=connector, timeout=timeout)
        return self._session

    async def infer(self, inputs: Tensors) -> Tensors:
        spec = self._spec
        if self._binary is False:
            data = http_json_request(inputs, spec.input_types, spec.outputs)
            headers = {"Content-Type": "application/json"}
        else:
            parts, header_length = http_request(inputs, spec.input_types, spec.outputs)
            data = b"".join(parts)
            headers = {_HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"}
        body, answer_headers = await self._request("POST", f"{self._model}/infer", data, headers)
        length = answer_headers.get(_HEADER_LENGTH)
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
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        try:
            async with self._client().request(method, path, data=data, headers=headers) as response:
                body = await _bounded_body(response)
                if response.status == 200:
                    return body, dict(response.headers)
                message = _error_message(body, response.status)
                if response.status in _ENDPOINT_STATUSES:
                    raise EndpointFailure(self.endpoint, f"HTTP {response.status}: {message}")
                raise http_model_error(response.status, message)
        except TimeoutError:
            raise EndpointFailure(self.endpoint, f"timed out after {self._timeout * 1000:.0f} ms") from None
        except aiohttp.ClientError as error:
            raise EndpointFailure(self.endpoint, f"{type(error).__name__}: {error}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, or EndpointFailure-worthy BadAnswer past MAX_RESPONSE_BYTES."""
    if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
        raise aiohttp.ClientPayloadError(f"an answer of {response.content_length} bytes exceeds {MAX_RESPONSE_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise aiohttp.ClientPayloadError(f"an answer exceeds {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_message(body: bytes, status: int) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return f"HTTP {status}"
