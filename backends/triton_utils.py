"""``triton_python_backend_utils`` for Triton Python models served by clipperd.

A Triton ``model.py`` starts with ``import triton_python_backend_utils as pb_utils``; the Python
backend puts this module in ``sys.modules`` under that name before it imports the model, so the
file runs unchanged. What is here is the part of Triton's module that non-decoupled models use:
``Tensor`` (``as_numpy``, ``name``, ``shape``, DLPack), the request (``inputs``,
``requested_output_names``, ``request_id``, ``parameters``...), ``InferenceResponse``,
``TritonError`` and ``TritonModelException``, ``get_input_tensor_by_name`` /
``get_output_tensor_by_name``, the model-config helpers (``get_input_config_by_name``,
``get_output_config_by_name``, ``triton_string_to_numpy``, ``triton_to_numpy_type``,
``numpy_to_triton_type``, ``using_decoupled_model_transaction_policy``) and ``Logger``.
BLS: ``InferenceRequest(model_name=..., inputs=..., requested_output_names=...).exec()`` and
``await ....async_exec()`` call another model of the repository (backends/bls.py; the section
"BLS" below). Decoupled models: ``request.get_response_sender()`` gives an
``InferenceResponseSender`` (its section below); ``exec(decoupled=True)`` gives a
``ResponseIterator`` of the target's answers. Not here: custom metrics: they raise
TritonModelException saying so."""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from backends import bls
from backends.common import datatypes
from backends.common.errors import (
    AlreadyExists,
    Cancelled,
    ClipperdError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from backends.common.streaming import Answer, AnswerStream

_log = logging.getLogger("clipperd.triton_python")

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# Triton's DataType enum values (model_config.proto), in order
_TYPE_NAMES = (
    "TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
    "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
)  # fmt: skip


class TritonModelException(Exception):
    """What Triton's utilities raise; an uncaught one fails the batch with its message."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        return self._msg


class TritonError:
    """An error for one response: ``InferenceResponse(output_tensors=[], error=TritonError(...))``."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, msg: str, code: int = UNKNOWN) -> None:
        self._msg = str(msg)
        self._code = code

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._msg!r}, code={self._code})"


class Tensor:
    """A named numpy array (host memory: ``is_cpu`` is always true)."""

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException("Tensor name must be a string")
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        if array.dtype.kind == "U":  # Triton stores strings as bytes
            array = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        if self._array.dtype == object:
            raise TritonModelException("BYTES tensors cannot be shared through DLPack")
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """From an object with ``__dlpack__`` (a torch tensor, a numpy array) on the host."""
        try:
            return Tensor(name, np.from_dlpack(capsule))
        except (TypeError, RuntimeError, BufferError) as exc:
            raise TritonModelException(f"from_dlpack: {exc}") from exc

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


# request parameters Triton takes into the request itself rather than its parameters()
_SERVER_PARAMETERS = frozenset(
    ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output")
)


class InferenceRequest:
    """One client request as the model sees it in ``execute(requests)``."""

    def __init__(
        self,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        request_id: str = "",
        parameters: Mapping[str, Any] | str | None = None,
        model_name: str = "",
        model_version: int = -1,
        timeout: int = 0,
        correlation_id: int | str = 0,
        flags: int = 0,
        **_: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._correlation_id = correlation_id  # for BLS: the target's sequence (with flags)
        self._flags = flags
        self._outputs = list(requested_output_names)
        self._id = request_id
        self._parameters = parameters if isinstance(parameters, str) else json.dumps(dict(parameters or {}))
        self._model_name = model_name
        self._model_version = model_version
        self._timeout = timeout  # microseconds; for BLS, how long exec() waits (0: the default)
        self._sender: Any = None  # a decoupled model's InferenceResponseSender
        self._client_parameters: Mapping[str, Any] | None = None  # a client's request: its parameters

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        """The request's sequence id (``sequence_id``, an integer or a string as the client
        sent it); 0 when it has none."""
        client = self._client_parameters
        if client is None:
            return self._correlation_id
        value = client.get("sequence_id", 0)
        return value if isinstance(value, int | str) else 0

    def parameters(self) -> str:
        """The request's parameters as JSON, as Triton gives them: the client's, without the
        ones the server itself acts on (``sequence_id``, ``priority``, ``timeout``...)."""
        client = self._client_parameters
        if client is None:
            return self._parameters
        return json.dumps({k: v for k, v in client.items() if k not in _SERVER_PARAMETERS})

    def flags(self) -> int:
        """TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END, as the request carries them."""
        client = self._client_parameters
        if client is None:
            return self._flags
        start = TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if client.get("sequence_start") else 0
        return start | (TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if client.get("sequence_end") else 0)

    def timeout(self) -> int:
        return self._timeout

    def model_name(self) -> str:
        return self._model_name

    def is_cancelled(self) -> bool:
        return self._sender is not None and bool(self._sender.is_cancelled())

    def get_response_sender(self) -> Any:
        if self._sender is None:
            raise TritonModelException("response senders are for decoupled models only (model_transaction_policy)")
        return self._sender

    def exec(self, decoupled: bool = False) -> Any:
        """BLS: runs this request on ``model_name`` and waits for its answer (an error answer,
        not an exception, when the model cannot answer)."""
        if decoupled:
            return _bls_stream(self)  # an iterator of InferenceResponse
        return _bls_exec(self)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """BLS from an ``async def execute``: awaits the answer of ``model_name`` (with
        ``decoupled=True``: an iterator of its answers, ``async for`` on the event loop)."""
        if decoupled:
            return _bls_stream(self)
        return await _bls_async_exec(self)

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling is not supported by clipperd")


class InferenceResponse:
    """The answer to one request: its output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Mapping[str, Any] | str | None = None,
    ) -> None:
        self._tensors = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(t) for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(t) for t in model_config.get("output", []) if t.get("name") == name), None)


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """``"TYPE_FP32"`` -> ``numpy.float32`` (``TYPE_STRING`` -> ``numpy.object_``)."""
    try:
        return datatypes.from_config(triton_type_string).numpy.type
    except (KeyError, ValueError):
        raise TritonModelException(f"unknown Triton data type {triton_type_string!r}") from None


def triton_to_numpy_type(data_type: int) -> Any:
    if not 0 < data_type < len(_TYPE_NAMES):
        raise TritonModelException(f"unknown Triton data type {data_type}")
    return triton_string_to_numpy(_TYPE_NAMES[data_type])


def numpy_to_triton_type(data_type: Any) -> int:
    dtype = np.dtype(data_type)
    if dtype.kind in "OSU":
        return _TYPE_NAMES.index("TYPE_STRING")
    for index, name in enumerate(_TYPE_NAMES[1:], start=1):
        if name not in ("TYPE_STRING", "TYPE_BF16") and triton_string_to_numpy(name) == dtype.type:
            return index
    raise TritonModelException(f"numpy type {dtype} has no Triton data type")


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Triton's model logger; messages go to the server's log under ``clipperd.triton_python``."""

    _LEVELS: ClassVar[dict[LogLevel, int]] = {
        LogLevel.INFO: logging.INFO,
        LogLevel.WARNING: logging.WARNING,
        LogLevel.ERROR: logging.ERROR,
    }

    @staticmethod
    def log(message: str, level: LogLevel = LogLevel.INFO) -> None:
        _log.log(Logger._LEVELS.get(level, logging.DEBUG), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug("%s", message)


# ---------------------------------------------------------------------------------------------
# BLS: a Triton model calling another model (backends/bls.py carries the call to the server)

_CODES: tuple[tuple[type[ClipperdError], int], ...] = (
    (NotFound, TritonError.NOT_FOUND),
    (InvalidArgument, TritonError.INVALID_ARG),
    (Unavailable, TritonError.UNAVAILABLE),
    (Unimplemented, TritonError.UNSUPPORTED),
    (AlreadyExists, TritonError.ALREADY_EXISTS),
    (Cancelled, TritonError.CANCELLED),
)


def _bls_call(request: InferenceRequest) -> bls.ModelCall:
    if not request.model_name():
        raise TritonModelException("InferenceRequest.exec: model_name is required")
    inputs = {}
    for tensor in request.inputs():
        if not isinstance(tensor, Tensor):
            raise TritonModelException(f"InferenceRequest.exec: an input is a {type(tensor).__name__}, not a Tensor")
        inputs[tensor.name()] = tensor.as_numpy()
    try:
        parameters = json.loads(request.parameters() or "{}")
    except ValueError:
        raise TritonModelException("InferenceRequest.exec: parameters are not JSON") from None
    if not isinstance(parameters, dict):
        raise TritonModelException("InferenceRequest.exec: parameters are not a JSON object")
    parameters.update(_sequence_parameters(request))
    version = request._model_version  # Triton has no getter for it either
    outputs = request.requested_output_names()
    return bls.ModelCall(request.model_name(), version, inputs, outputs, parameters, request.request_id())


def _sequence_parameters(request: InferenceRequest) -> dict[str, Any]:
    """A BLS request's ``correlation_id`` and ``flags`` as the target's sequence parameters (a
    client's ``sequence_id``, ``sequence_start``, ``sequence_end``)."""
    correlation, flags = request._correlation_id, request._flags
    if not isinstance(correlation, int | str) or isinstance(correlation, bool):
        raise TritonModelException("InferenceRequest: correlation_id must be an integer or a string")
    sequence: dict[str, Any] = {"sequence_id": correlation} if correlation else {}
    if flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
        sequence["sequence_start"] = True
    if flags & TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
        sequence["sequence_end"] = True
    return sequence


def _bls_response(outputs: Mapping[str, np.ndarray] | None, error: BaseException | None) -> InferenceResponse:
    if error is None and outputs is not None:
        return InferenceResponse([Tensor(name, array) for name, array in outputs.items()])
    code = next((c for kind, c in _CODES if isinstance(error, kind)), TritonError.INTERNAL)
    return InferenceResponse([], TritonError(bls.error_text(error or RuntimeError("no answer")), code))


def _bls_exec(request: InferenceRequest) -> InferenceResponse:
    call = _bls_call(request)
    try:
        return _bls_response(bls.call_sync(call, request.timeout()), None)
    except Exception as error:  # every failure is the answer's error, as Triton's BLS gives it
        return _bls_response(None, error)


async def _bls_async_exec(request: InferenceRequest) -> InferenceResponse:
    call = _bls_call(request)
    try:
        return _bls_response(await bls.call_async(call, request.timeout()), None)
    except Exception as error:
        return _bls_response(None, error)


def _bls_stream(request: InferenceRequest) -> ResponseIterator:
    """``exec(decoupled=True)``: the target's answers as responses (a failure to start: one
    error response)."""
    call = _bls_call(request)
    try:
        return ResponseIterator(bls.stream(call, request.timeout()))
    except Exception as error:
        return ResponseIterator(None, _bls_response(None, error))


class ResponseIterator:
    """The responses of a BLS call with ``decoupled=True``, as Triton's: one per answer of the
    target, the last one its final (it may have no output tensors: a final flag alone); an
    error answer is a response whose ``has_error()`` is true (a call that fails, such as an
    unknown target or a deadline, ends with one). ``for`` pulls
    them on a model's thread, ``async for`` in an ``async def execute``. ``cancel()`` stops the
    target (its ``is_cancelled()`` turns true), as does leaving ``execute`` before the end."""

    def __init__(self, stream: bls.Streamed | None, failure: InferenceResponse | None = None) -> None:
        self._stream = stream
        self._failure = failure

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        if self._stream is None:
            return self._fail()
        try:
            answer = self._stream.next_sync()
        except ClipperdError as error:
            raise TritonModelException(str(error)) from None
        if answer is None:
            raise StopIteration
        return _bls_answer(answer)

    def __aiter__(self) -> ResponseIterator:
        return self

    async def __anext__(self) -> InferenceResponse:
        if self._stream is None:
            try:
                return self._fail()
            except StopIteration:
                raise StopAsyncIteration from None
        answer = await self._stream.next_async()
        if answer is None:
            raise StopAsyncIteration
        return _bls_answer(answer)

    def _fail(self) -> InferenceResponse:
        failure, self._failure = self._failure, None
        if failure is None:
            raise StopIteration
        return failure

    def cancel(self) -> None:
        if self._stream is not None:
            self._stream.cancel()


def _bls_answer(answer: Answer) -> InferenceResponse:
    if answer.error is not None:
        return _bls_response(None, answer.error)
    return _bls_response(answer.outputs, None)


# Decoupled models: the response sender (section owned by the decoupled-models work).


class InferenceResponseSender:
    """Sends a decoupled request's answers, as Triton's: ``send(response, flags)`` zero to many
    times, the last with ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (``response`` may then
    be None: a final flag alone). A send after the final one raises. ``send`` waits while the
    request's reader has not taken the answers already sent (back-pressure); once the client
    has gone away, ``is_cancelled()`` is true and sends are dropped."""

    def __init__(self, stream: AnswerStream, convert: Callable[[Any], Any]) -> None:
        self._stream = stream
        self._convert = convert  # InferenceResponse -> Tensors or the ClipperdError it carries
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException(f"unknown response flags {flags}")
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if response is None and not final:
            raise TritonModelException(
                "Inference Response object is needed when the flags are not set to TRITONSERVER_RESPONSE_COMPLETE_FINAL"
            )
        self._closed = final
        if response is None:
            self._stream.put(Answer({}, final=True))
            return
        result = self._convert(response)
        if isinstance(result, dict):
            self._stream.put(Answer(result, final=final))
        else:
            self._stream.put(Answer({}, result, final=final))

    def is_cancelled(self) -> bool:
        return self._stream.cancelled
