"""Applications on the server: the registry of them, the admin operations, the resolver that
runs a linked model through its own scheduler, the KServe face (an application answers as a
model of the same name), and persistence through an AppStore.

Tensor contract: the linked models take one input and return one output; the application's
input and output are those of its first linked model (name, data type, shape), and every member
receives the same array (converted to its own input data type). Over KServe the answer carries
the combined output and the response parameters ``default`` (bool), ``confidence`` (float, the
lowest of the batch's rows) and, when a row got the default output, ``default_explanation``."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from backends.common import datatypes
from backends.common.errors import (
    AlreadyExists,
    ClipperdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from backends.proto import model_config_pb2 as mc
from schedulers.applications.application import DEFAULT_UID, Answer, Application
from schedulers.applications.definition import (
    AppDefinition,
    LinkedModel,
    check_default_output,
    check_name,
    check_policy,
    check_slo,
    check_threshold,
)
from schedulers.applications.selection import summary
from schedulers.stats import ModelStats, RequestTracker
from server.applications.state import AppStore, Definition, States
from server.core import inference
from server.core.inference import Tensor, TensorCall
from server.core.messages import InferRequest, InferResponse, ModelMetadata, OutputTensor, TensorMetadata
from server.core.model_version import ModelVersion
from server.core.repository import ModelRepository
from server.core.validation import InputSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AppTensor:
    name: str
    datatype: str  # wire name
    dims: list[int]  # without the batch dimension
    batched: bool  # the first linked model batches (max_batch_size > 0)


@dataclasses.dataclass(frozen=True)
class AppSignature:
    input: AppTensor
    output: AppTensor


class _Persisting:
    """Turns a failing state store (Redis gone, disk full) into 503 for the client; the cause
    goes to the log."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if error is not None and isinstance(error, Exception) and not isinstance(error, ClipperdError):
            log.error("application state store failed: %s: %s", type(error).__name__, error)
            raise Unavailable("the application state store is unavailable") from None


_persisting = _Persisting()


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object")
    return body


class ApplicationManager:
    def __init__(self, repository: ModelRepository, store: AppStore) -> None:
        self.repository = repository
        self.store = store
        self.apps: dict[str, Application] = {}
        self._query_ids = itertools.count(1)
        self._lock = asyncio.Lock()  # admin changes one at a time (a read-modify-write each)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        log.info("application state: %s", self.store.describe())
        await self.store.open(self._changed_elsewhere)
        for name, (definition, states) in (await self.store.load_all()).items():
            try:
                self.apps[name] = Application(AppDefinition.from_json(definition), states)
            except Exception as error:
                log.error("application %r in the state store is unreadable, skipped: %s", name, error)
        if self.apps:
            log.info("applications: %s", ", ".join(sorted(self.apps)))

    async def stop(self) -> None:
        await self.store.close()

    async def _changed_elsewhere(self, name: str, uid: str | None) -> None:
        """Another replica changed ``name`` (its definition, or the state of ``uid``); an empty
        name: anything may have changed."""
        if not name:
            records = await self.store.load_all()
            for gone in set(self.apps) - set(records):
                del self.apps[gone]
            for each, record in records.items():
                self._apply(each, record, None)
            return
        self._apply(name, await self.store.load(name), uid)

    def _apply(self, name: str, record: tuple[Definition, States] | None, uid: str | None) -> None:
        """``name`` as the store holds it now (``uid``: only that user's state changed)."""
        if record is None:
            self.apps.pop(name, None)
            return
        definition, states = record
        app = self.apps.get(name)
        if app is None:
            self.apps[name] = Application(AppDefinition.from_json(definition), states)
        elif uid is not None:
            if uid in states:
                app.states[uid] = states[uid]
        else:
            app.redefine(AppDefinition.from_json(definition))
            app.states = dict(states)

    # -- lookups ------------------------------------------------------------------------------

    def get(self, name: str) -> Application:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"application {name[:64]!r} is not found")
        return app

    def __contains__(self, name: str) -> bool:
        return name in self.apps

    def _check_model(self, name: str) -> None:
        check_name(name, "a model 'name'")
        if name not in self.repository.scan() and not self.repository.versions(name):
            raise NotFound(f"model {name[:64]!r} is not in the model repository")

    def describe(self, app: Application) -> dict[str, Any]:
        state = app.state(DEFAULT_UID)
        return {
            **app.definition.to_json(),
            "state": {"users": len(app.states), "weights": summary(state)},
            "metrics": app.metrics.to_json(),
        }

    # -- admin ----------------------------------------------------------------------------------

    async def register(self, body: Any) -> dict[str, Any]:
        definition = AppDefinition.from_json(_object(body))
        async with self._lock:
            if definition.name in self.apps:
                raise AlreadyExists(f"application {definition.name!r} already exists")
            if self.repository.versions(definition.name) or definition.name in self.repository.scan():
                raise AlreadyExists(f"{definition.name!r} is the name of a model: an application needs its own")
            for model in definition.models:
                self._check_model(model.name)
            with _persisting:
                created = await self.store.create(definition.name, definition.to_json())
            if not created:
                raise AlreadyExists(f"application {definition.name!r} already exists (on another replica)")
            self.apps[definition.name] = Application(definition)
        return definition.to_json()

    async def delete(self, name: str) -> None:
        async with self._lock:
            self.get(name)
            del self.apps[name]
            with _persisting:
                await self.store.delete(name)

    async def _redefine(self, app: Application, definition: AppDefinition) -> dict[str, Any]:
        app.redefine(definition)
        with _persisting:
            await self.store.save(app.name, definition.to_json(), app.states)
        return definition.to_json()

    async def link(self, name: str, body: Any) -> dict[str, Any]:
        linked = LinkedModel.from_json(_object(body))
        async with self._lock:
            app = self.get(name)
            self._check_model(linked.name)
            return await self._redefine(app, app.definition.with_model(linked))

    async def unlink(self, name: str, model: str) -> dict[str, Any]:
        async with self._lock:
            app = self.get(name)
            if app.definition.linked(model) is None:
                raise NotFound(f"model {model[:64]!r} is not linked to {name!r}")
            models = [m for m in app.definition.models if m.name != model]
            return await self._redefine(app, dataclasses.replace(app.definition, models=models))

    async def pin(self, name: str, body: Any) -> dict[str, Any]:
        """Pins a linked model's version; the version it had is remembered for rollback."""
        body = _object(body)
        wanted = LinkedModel.from_json({"name": body.get("model"), "version": body.get("version")})
        if not wanted.version:
            raise InvalidArgument("'version' is required")
        async with self._lock:
            app = self.get(name)
            linked = self._linked(app, wanted.name)
            if wanted.version not in {str(v.version) for v in self.repository.versions(wanted.name)}:
                raise NotFound(f"model {wanted.name!r} version {wanted.version} is not loaded")
            if linked.version != wanted.version:
                linked.previous.append(linked.version)
                linked.version = wanted.version
            return await self._redefine(app, app.definition)

    async def rollback(self, name: str, body: Any) -> dict[str, Any]:
        model = _object(body).get("model")
        async with self._lock:
            app = self.get(name)
            linked = self._linked(app, check_name(model, "'model'"))
            if not linked.previous:
                raise FailedPrecondition(f"model {linked.name!r} has no earlier version to roll back to")
            linked.version = linked.previous.pop()
            return await self._redefine(app, app.definition)

    @staticmethod
    def _linked(app: Application, model: str) -> LinkedModel:
        linked = app.definition.linked(model)
        if linked is None:
            raise NotFound(f"model {model[:64]!r} is not linked to {app.name!r}")
        return linked

    async def update_definition(self, name: str, body: Any) -> dict[str, Any]:
        body = _object(body)
        checks = {
            "default_output": check_default_output,
            "slo_micros": check_slo,
            "confidence_threshold": check_threshold,
            "policy": check_policy,
        }
        unknown = sorted(set(body) - set(checks))
        if unknown or not body:
            raise InvalidArgument(f"update one or more of {', '.join(checks)} (unknown: {', '.join(unknown)[:100]})")
        changes = {key: checks[key](value) for key, value in body.items()}
        async with self._lock:
            app = self.get(name)
            return await self._redefine(app, dataclasses.replace(app.definition, **changes))

    # -- predict and feedback -------------------------------------------------------------------

    def signature(self, app: Application) -> AppSignature:
        """The first linked model's input and output (see the module docstring)."""
        if not app.definition.models:
            raise FailedPrecondition(f"application {app.name!r} has no linked model")
        first = app.definition.models[0]
        model = self.repository.get(first.name, first.version)
        spec, out, batched = _one_in_one_out(model)
        return AppSignature(
            AppTensor(spec.name, spec.datatype, list(spec.dims), batched),
            AppTensor(out.name, model.signature.outputs[out.name], list(out.dims), batched),
        )

    async def run_model(self, name: str, version: str, x: np.ndarray) -> np.ndarray:
        """The resolver: one input through the model's own validation, cache and batcher, by the
        entry point every request takes (server/core/inference.py)."""
        model = self.repository.get(name, version)
        spec, out, batched = _one_in_one_out(model)
        dtype = datatypes.from_wire(spec.datatype).numpy
        data = x if x.dtype == dtype or spec.datatype == "BYTES" else x.astype(dtype)
        if batched:
            data = data[np.newaxis]
        outputs = await inference.infer(model, TensorCall([Tensor(spec.name, data, spec.datatype)]))
        result = outputs[out.name]
        return result[0] if batched else result

    def next_query_id(self) -> int:
        return next(self._query_ids)

    async def predict(self, app: Application, x: np.ndarray, uid: str) -> Answer:
        return await app.predict(x, uid, self.run_model)

    async def update(self, app: Application, x: np.ndarray, label: np.ndarray, uid: str) -> dict[str, float]:
        joined = functools.partial(self._join_feedback, app, label=label)
        state = await app.update(x, label, uid, self.run_model, joined)
        with _persisting:
            await self.store.save_state(app.name, app.state_key(uid), state)
        return summary(state)

    def _join_feedback(self, app: Application, answers: dict[str, np.ndarray], *, label: np.ndarray) -> None:
        """The label joined to each member's answer, for the members with feedback on."""
        versions = {m.name: m.version for m in app.definition.models}
        for name, answer in answers.items():
            try:
                model = self.repository.get(name, versions.get(name, ""))
            except ClipperdError:
                continue  # unloaded since it answered
            if model.feedback is not None:
                model.feedback.join_row(answer, label)

    # -- the KServe face --------------------------------------------------------------------------

    def _versioned(self, name: str, version: str) -> Application:
        return self.versioned(self.get(name), version)

    @staticmethod
    def versioned(app: Application, version: str) -> Application:
        if version not in ("", "1"):
            raise NotFound(f"application {app.name!r} has only version 1")
        return app

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.signature(self._versioned(name, version))
        except ClipperdError:
            return False
        return True

    def lookup(self, name: str) -> Application | None:
        return self.apps.get(name)

    def registered(self) -> Iterable[Application]:
        return self.apps.values()

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        sig = self.signature(self._versioned(name, version))
        tensors = [
            TensorMetadata(t.name, t.datatype, ([-1] if t.batched else []) + t.dims) for t in (sig.input, sig.output)
        ]
        return ModelMetadata(name, ["1"], "clipperd_application", tensors[:1], tensors[1:])

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        app = self._versioned(name, version)
        first = app.definition.models[0] if app.definition.models else None
        config = mc.ModelConfig(name=name, platform="clipperd_application")
        if first is not None and self.repository.is_ready(first.name, first.version):
            model = self.repository.get(first.name, first.version).config
            config.max_batch_size = model.max_batch_size
            config.input.extend(model.input)
            config.output.extend(model.output)
        return config

    def statistics(self, name: str, version: str = "") -> ModelStats:
        return self._versioned(name, version).stats

    async def infer(self, app: Application, request: InferRequest) -> InferResponse:
        """A KServe infer on the application, counted in its KServe statistics (as perf_analyzer
        and Triton's statistics endpoint read them) as a model's request is: a failure before
        the members run (a wrong input) is OTHER, one while they run counts as in execution."""
        with app.stats.track() as tracked:
            return await self._infer(app, request, tracked)

    async def _infer(self, app: Application, request: InferRequest, tracked: RequestTracker) -> InferResponse:
        sig = self.signature(app)
        if len(request.inputs) != 1:
            raise InvalidArgument(f"application {app.name!r} takes one input, {sig.input.name!r}")
        tensor = request.inputs[0]
        unknown = [o.name for o in request.outputs if o.name != sig.output.name]
        if unknown:
            raise InvalidArgument(
                f"application {app.name!r} has one output, {sig.output.name!r}, not {unknown[0][:64]!r}"
            )
        if tensor.datatype != sig.input.datatype:
            raise InvalidArgument(
                f"input {tensor.name[:64]!r} must be {sig.input.datatype}, not {tensor.datatype[:16]}"
            )
        rows = list(tensor.data) if sig.input.batched else [tensor.data]
        uid = str(request.parameters.get("uid", DEFAULT_UID))
        tracked.executing = True
        answers = await asyncio.gather(*(app.predict(row, uid, self.run_model) for row in rows))
        tracked.executing = False
        outputs = [self.answer_array(app, a, sig.output) for a in answers]
        data = np.stack(outputs) if sig.input.batched else outputs[0]
        params: dict[str, bool | int | float | str] = {
            "default": any(a.default for a in answers),
            "confidence": min(a.confidence for a in answers),
        }
        explanation = next((a.explanation for a in answers if a.default), "")
        if explanation:
            params["default_explanation"] = explanation
        out = OutputTensor(sig.output.name, sig.output.datatype, list(data.shape), data)
        return InferResponse(app.name, "1", request.id, [out], params)

    @staticmethod
    def answer_array(app: Application, answer: Answer, spec: AppTensor) -> np.ndarray:
        if answer.output is not None:
            return answer.output
        dtype = datatypes.from_wire(spec.datatype).numpy
        default = app.definition.default_output
        value = np.asarray(default if spec.datatype != "BYTES" else _as_bytes(default), dtype=dtype)
        shape = [d if d > 0 else value.size for d in spec.dims]
        try:
            return np.broadcast_to(value.reshape(-1) if value.size > 1 else value, shape).copy()
        except ValueError:
            raise FailedPrecondition(
                f"application {app.name!r}: its default output does not fit the output shape {spec.dims}"
            ) from None


def _as_bytes(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_bytes(v) for v in value]
    return value.encode() if isinstance(value, str) else value


def _one_in_one_out(model: ModelVersion) -> tuple[InputSpec, mc.ModelOutput, bool]:
    """A linked model's one input, one output and whether it is batched; FailedPrecondition
    when it has more (an application answers one value per row)."""
    config = model.config
    if len(config.input) != 1 or len(config.output) != 1:
        raise FailedPrecondition(f"model {config.name!r} must have exactly one input and one output")
    return model.signature.inputs[config.input[0].name], config.output[0], config.max_batch_size > 0
