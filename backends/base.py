"""The backend contract: load a model version on a device, execute batches, unload.

A backend instance is one model instance (Triton's instance_group entry): it is created, loaded,
used and unloaded on the same execution thread, so thread-local framework state (PyTorch's
intra-op threads, a CUDA stream) set in ``load`` holds for every ``execute``."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from backends.bls import BlsLink
from backends.common.errors import ClipperdError, NotFound
from backends.common.parameters import Parameters
from backends.common.streaming import AnswerStream
from backends.common.tensors import Tensors as Tensors  # re-exported: the contract names it
from backends.common.tensors import concatenate
from backends.proto import model_config_pb2 as mc


@dataclass(frozen=True)
class Device:
    """Where an instance runs: ``cpu`` or ``gpu`` with a CUDA ordinal."""

    kind: str  # "cpu" or "gpu"
    index: int = 0

    @property
    def name(self) -> str:
        """The framework device string: ``cpu`` or ``cuda:N``."""
        return f"cuda:{self.index}" if self.kind == "gpu" else "cpu"

    def __str__(self) -> str:
        return self.name


CPU = Device("cpu")


@dataclass(frozen=True)
class InstanceContext:
    """Everything a backend needs to load one instance of one model version."""

    config: mc.ModelConfig
    version: int
    version_path: Path  # <repository>/<model>/<version>
    device: Device
    instance_name: str  # e.g. "mlp_torch_0_cpu"
    threads: int = 1  # intra-op threads this instance may use without oversubscribing the cores
    parameters: Mapping[str, str] = field(default_factory=dict)  # the config's `parameters`
    bls: BlsLink | None = None  # the way to the repository's other models (backends/bls.py)

    @property
    def model_name(self) -> str:
        return self.config.name

    @property
    def who(self) -> str:
        """How messages name the model: ``model 'X'``."""
        return f"model '{self.config.name}'"

    @property
    def params(self) -> Parameters:
        """``parameters`` read with the one reader (typed getters, one error format)."""
        return Parameters(self.config.name, self.parameters)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once on its class; the schedulers place and run its
    instances by it, so nothing else keeps a list of backend names."""

    #: KIND_AUTO places its instances on a GPU when one is visible (KIND_GPU asks any backend)
    gpu: bool = False
    #: ``execute`` holds the GIL throughout (pure Python): a thread of its own buys no parallelism
    #: and costs two thread switches per batch, so the scheduler runs it on the event loop unless
    #: the config's ``execution_mode`` parameter says ``thread`` or ``process``
    holds_gil: bool = False
    #: ``execute`` may be called from another thread than the one that loaded the instance (never
    #: two at once) on a CPU: the framework keeps no per-thread state that execution relies on.
    #: The scheduler then runs short requests on an idle device's event loop, sparing two thread
    #: switches (the ``idle_inline_us`` parameter)
    off_thread: bool = False
    #: ``execute_async`` runs a batch on the event loop, as a task, several at once (a remote
    #: call): no thread, no GIL held while it waits
    asynchronous: bool = False
    #: instances are placed per remote endpoint, not per device (backends/remote, schedulers/remote.py)
    remote: bool = False
    #: serves ``model_transaction_policy { decoupled: true }``: ``execute_decoupled`` answers
    #: each request of a batch through its AnswerStream, zero to many times
    decoupled: bool = False


class Backend(abc.ABC):
    """One model instance. ``execute`` receives a whole batch: every input has the batch as its
    first dimension when the model's max_batch_size > 0. It returns every output the config
    declares (the server filters what the client asked for)."""

    #: file name used when the config has no default_model_filename
    default_filename: str = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: InstanceContext) -> None:
        self.context = context

    @property
    def model_file(self) -> Path:
        """The model's file in the version folder: ``default_model_filename`` or the backend's own."""
        name = self.context.config.default_model_filename or self.default_filename
        return self.context.version_path / name

    def existing_model_file(self, kind: str = "file") -> Path:
        """``model_file``, or NotFound naming it; ``kind`` other than "file" names a folder."""
        path = self.model_file
        if not (path.is_file() if kind == "file" else path.is_dir()):
            context = self.context
            raise NotFound(f"{context.who} version {context.version}: {kind} '{path.name}' not found")
        return path

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model on ``context.device``; raise to mark the version UNAVAILABLE."""

    def stage(self, parts: Sequence[Tensors]) -> Tensors:
        """One batch's inputs from its requests' inputs, on the instance's thread just before
        ``execute``. A GPU backend overrides it to gather them straight into pinned host memory,
        so a batch is copied once on the host and the device copy can run asynchronously."""
        return concatenate(parts)

    @abc.abstractmethod
    def execute(self, inputs: Tensors) -> Tensors:
        """Run one batch. Called on the instance's own thread, one batch at a time."""

    async def execute_async(self, inputs: Tensors) -> Tensors:
        """Run one batch on the event loop, for a backend whose capabilities say ``asynchronous``."""
        raise NotImplementedError(f"{type(self).__name__} executes on its thread")

    #: set (by ``load``) when the model takes a batch as its requests, as Triton's Python models
    #: do: the scheduler then calls ``execute_requests`` instead of ``stage`` and ``execute``
    per_request: bool = False

    def execute_requests(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        """One batch as its requests' inputs; each request's outputs, or the error that fails it
        alone. An exception raised here fails the whole batch."""
        raise NotImplementedError(f"{type(self).__name__} executes whole batches")

    def execute_decoupled(self, parts: Sequence[Tensors], streams: Sequence[AnswerStream]) -> None:
        """One batch of a decoupled model, as its requests' inputs; each request's answers go to
        its stream (``streams[i]``), during this call or later from another thread, the last
        one ``final``. An exception raised here ends every stream of the batch with it."""
        raise NotImplementedError(f"{type(self).__name__} has no decoupled execution")

    @classmethod
    def preferred_mode(cls, config: mc.ModelConfig, version_path: Path) -> str:
        """Where this model wants to execute when the config does not say, decided before
        loading: "" (the backend's capabilities decide), "thread" (a model that waits for other
        models, BLS, even though it holds the GIL) or "async" (its batches are coroutines run as
        tasks on the event loop: ``execute_requests_async``)."""
        return ""

    @classmethod
    def reads_identity(cls, config: mc.ModelConfig, version_path: Path) -> bool:
        """Whether this model reads each request's id and parameters (the server then hands it
        ``Identified`` inputs; every other model gets plain dicts, at no cost)."""
        return False

    async def execute_requests_async(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        """``execute_requests`` as a coroutine on the event loop (``preferred_mode`` "async")."""
        raise NotImplementedError(f"{type(self).__name__} executes on its thread")

    @classmethod
    def autocomplete(cls, config: mc.ModelConfig, version_path: Path) -> None:
        """Fills what the model file tells of a config that leaves out its inputs or outputs
        (Triton's auto-complete); most backends cannot, and leave it as it is."""
        return

    def unload(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Release the model; called once, on the instance's thread."""
