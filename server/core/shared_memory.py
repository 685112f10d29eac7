"""Triton's system shared memory extension: clients register POSIX shared-memory objects (their
``/dev/shm`` names) as named regions; a request's inputs may be read from a region and its outputs
written to one, instead of travelling in the message.

Both transports use this one registry. The codecs only pass the ``shared_memory_*`` parameters
through (an input in shared memory carries ``SHM_PLACEHOLDER`` as its data); ``SharedMemoryRegistry
.use`` resolves them for the DataPlane, and holds the regions a request uses so they cannot be
unregistered under it.

The client owns the object and may truncate it at any moment. A mapping would then fault
(SIGBUS) on the first page past the new end, and no size check before the access can close that
race. So nothing is mapped: a region keeps only its descriptor, inputs are copied out with
``preadv`` into the tensor's own buffer (a short read means truncated: FAILED_PRECONDITION) and
outputs are written with ``pwrite``, after a size check. A truncate racing that check makes
``pwrite`` grow the object again (sparse, up to the registered end): the client loses its own
data, the server never faults. docs/shared-memory.md has the measured cost (none that matters)."""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from backends.common import datatypes
from backends.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from backends.common.tensors import array_from_raw, serialize_bytes
from server.core.messages import InferRequest, InferResponse, InputTensor, Param, Params

log = logging.getLogger(__name__)

SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_PLACEHOLDER = np.empty(0, dtype=np.uint8)  # an input's data until its region is read

SHM_ROOT = Path("/dev/shm")  # where Linux keeps the objects shm_open names
MAX_REGIONS = 256  # each region holds an open descriptor
_NAME_LIMIT = 256
# a shm_open name: one path component, optionally after a leading "/" (as tritonclient writes it)
_KEY = re.compile(r"/?([^/\x00]{1,255})")


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """A registered region: the object's descriptor (opened O_RDWR) and where the region lies in it.
    Every access is a positioned read or write on the descriptor, never a mapping (see above)."""

    __slots__ = ("fd", "status", "users")

    def __init__(self, status: RegionStatus, fd: int) -> None:
        self.status = status
        self.fd = fd
        self.users = 0  # requests in flight that read or write it

    def locate(self, offset: int, byte_size: int, what: str) -> int:
        """The object's offset of ``byte_size`` bytes at ``offset`` of the region."""
        size = self.status.byte_size
        if offset > size or byte_size > size - offset:
            raise InvalidArgument(
                f"{what}: offset {offset} + byte size {byte_size} is out of bounds of shared memory "
                f"region '{self.status.name}' ({size} bytes)"
            )
        return self.status.offset + offset

    def read(self, at: int, byte_size: int) -> np.ndarray:
        """``byte_size`` bytes at ``at`` of the object, copied into a new array."""
        out = np.empty(byte_size, dtype=np.uint8)
        view = out.data  # format "B": one byte per element
        done = 0
        while done < byte_size:  # a read returns at most ~2 GiB (Linux's MAX_RW_COUNT)
            got = os.preadv(self.fd, [view[done:]], at + done)
            if got == 0:
                raise self._truncated()
            done += got
        return out

    def write(self, at: int, data: memoryview) -> None:
        """Writes ``data`` at ``at`` of the object. Checked first: writing past the end would
        grow an object the client truncated; a truncate after the check only loses its data."""
        self.check_covers(at + len(data))
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], at + done)

    def check_covers(self, end: int) -> None:
        if os.fstat(self.fd).st_size < end:
            raise self._truncated()

    def _truncated(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"shared memory region '{self.status.name}': the object '{self.status.key}' was truncated "
            "after it was registered; register it again"
        )

    def close(self) -> None:
        os.close(self.fd)


class SharedMemoryRegistry:
    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, _Region] = {}

    # ------------------------------------------------------------------------------ management

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        _check_name(name)
        path = self._path(key)
        _check_int(offset, "offset", name, minimum=0)
        _check_int(byte_size, "byte_size", name, minimum=1)
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' is already registered")
        if len(self._regions) >= MAX_REGIONS:
            raise ResourceExhausted(f"{MAX_REGIONS} shared memory regions are registered: unregister some first")
        fd = _open(path, key)
        try:
            _check_bounds(fd, RegionStatus(name, key, offset, byte_size))
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd)

    def unregister(self, name: str = "") -> None:
        """Unregisters ``name``, or every region when it is empty. An unknown name is not an error
        (as in Triton); a region that a request in flight uses is not unregistered."""
        if name:
            region = self._regions.get(name)
            if region is not None:
                if region.users:
                    raise FailedPrecondition(
                        f"shared memory region '{name}' is in use by {region.users} request(s) in flight: "
                        "unregister it when they have finished"
                    )
                del self._regions[name]
                region.close()
            return
        busy = [n for n, r in self._regions.items() if r.users]
        for region_name in [n for n in self._regions if n not in busy]:
            self._regions.pop(region_name).close()
        if busy:
            listed = ", ".join(f"'{n}'" for n in busy[:8])
            raise FailedPrecondition(
                f"shared memory regions in use by requests in flight were not unregistered: {listed}"
            )

    def status(self, name: str = "") -> list[RegionStatus]:
        if not name:
            return [self._regions[n].status for n in sorted(self._regions)]
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"unable to find system shared memory region '{name[:_NAME_LIMIT]}'")
        return [region.status]

    def close(self) -> None:
        """Closes every region (at shutdown, whoever still uses it)."""
        regions, self._regions = self._regions, {}
        for region in regions.values():
            region.close()

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not (match := _KEY.fullmatch(key)) or match.group(1) in (".", ".."):
            shown = key[:64] if isinstance(key, str) else type(key).__name__
            raise InvalidArgument(
                f"shared memory key {shown!r} is not a POSIX shared memory name (like '/my_region': "
                "one name, no other '/')"
            )
        return self._root / match.group(1)

    # ------------------------------------------------------------------------------- inference

    def use(self, request: InferRequest) -> SharedMemoryUse:
        """Reads the request's shared-memory inputs into its tensors and finds where its outputs
        go; the regions stay held until the returned context exits."""
        if not uses_shared_memory(request):
            return _NO_USE
        use = SharedMemoryUse()
        try:
            for tensor in request.inputs:
                where = _placement(tensor.parameters, f"input '{tensor.name[:64]}'")
                if where is not None:
                    self._read_input(tensor, where, use)
            for output in request.outputs:
                where = _placement(output.parameters, f"output '{output.name[:64]}'")
                if where is not None:
                    region_name, offset, byte_size = where
                    region = self._lookup(region_name, use)
                    at = region.locate(offset, byte_size, f"output '{output.name[:64]}'")
                    region.check_covers(at + byte_size)  # refused before the model runs, if already truncated
                    use.targets[output.name] = _Target(region, offset, at, byte_size)
        except BaseException:
            use.release()
            raise
        return use

    def _read_input(self, tensor: InputTensor, where: tuple[str, int, int], use: SharedMemoryUse) -> None:
        what = f"input '{tensor.name[:64]}'"
        region_name, offset, byte_size = where
        region = self._lookup(region_name, use)
        at = region.locate(offset, byte_size, what)
        dtype = datatypes.from_wire(tensor.datatype)
        # the tensor views its own copy: the client may rewrite (or truncate) the region meanwhile
        tensor.data = array_from_raw(region.read(at, byte_size).data, dtype, tensor.shape, tensor.name)

    def _lookup(self, name: str, use: SharedMemoryUse) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"unable to find system shared memory region '{name[:_NAME_LIMIT]}'")
        use.hold(region)
        return region


@dataclass(frozen=True, slots=True)
class _Target:
    """Where an output goes: ``room`` bytes at ``offset`` of ``region`` (``at`` of its object)."""

    region: _Region
    offset: int
    at: int
    room: int


class SharedMemoryUse:
    """The regions one request reads and writes; a context that holds them until it exits."""

    def __init__(self) -> None:
        self.held: list[_Region] = []
        self.targets: dict[str, _Target] = {}

    def hold(self, region: _Region) -> None:
        region.users += 1
        self.held.append(region)

    def release(self) -> None:
        for region in self.held:
            region.users -= 1
        self.held = []

    def __enter__(self) -> SharedMemoryUse:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def write_outputs(self, response: InferResponse) -> None:
        """Writes the outputs that go to shared memory there; in the response they keep their name,
        data type and shape, carry the region's parameters, and no data."""
        if not self.targets:
            return
        for tensor in response.outputs:
            target = self.targets.get(tensor.name)
            if target is None:
                continue
            region = target.region
            dtype = datatypes.BY_WIRE[tensor.datatype]
            if dtype.wire == "BYTES":
                data: bytes | memoryview = serialize_bytes(tensor.data)
            else:
                data = np.ascontiguousarray(tensor.data, dtype=dtype.numpy).data.cast("B")
            size = len(data)
            if size > target.room:
                raise InvalidArgument(
                    f"output '{tensor.name}' needs {size} bytes, but shared memory byte size {target.room} "
                    f"was given for it in region '{region.status.name}'"
                )
            region.write(target.at, memoryview(data))
            tensor.data = np.empty(0, dtype=dtype.numpy if dtype.wire != "BYTES" else object)
            params: Params = {SHM_REGION: region.status.name, SHM_BYTE_SIZE: size}
            if target.offset:
                params[SHM_OFFSET] = target.offset
            tensor.parameters = params


_NO_USE = SharedMemoryUse()  # for requests without shared memory: holds nothing, writes nothing


def uses_shared_memory(request: InferRequest) -> bool:
    """Whether any tensor has parameters (most have none): only those may name a region."""
    for tensor in request.inputs:  # a loop, not any() over a generator: this runs on every request
        if tensor.parameters:
            return True
    return bool(request.outputs) and any(o.parameters for o in request.outputs)


def _placement(params: Params, what: str) -> tuple[str, int, int] | None:
    """(region, offset, byte size) from a tensor's parameters, which lose them; None when the
    tensor is not in shared memory."""
    region = params.pop(SHM_REGION, None)
    offset: Param | None = params.pop(SHM_OFFSET, None)
    byte_size: Param | None = params.pop(SHM_BYTE_SIZE, None)
    if region is None:
        if offset is not None or byte_size is not None:
            raise InvalidArgument(f"{what}: {SHM_OFFSET} and {SHM_BYTE_SIZE} need {SHM_REGION}")
        return None
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{what}: {SHM_REGION} must be a non-empty string")
    if byte_size is None:
        raise InvalidArgument(f"{what}: {SHM_BYTE_SIZE} must be given with {SHM_REGION}")
    return (
        region,
        _size_param(0 if offset is None else offset, SHM_OFFSET, what),
        _size_param(byte_size, SHM_BYTE_SIZE, what),
    )


def _size_param(value: Param, key: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what}: {key} must be a non-negative integer, got {str(value)[:32]}")
    return value


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > _NAME_LIMIT or "\x00" in name:
        raise InvalidArgument(f"a shared memory region needs a name of 1 to {_NAME_LIMIT} characters (no NUL)")


def _check_int(value: object, field: str, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(
            f"shared memory region '{name}': {field} must be an integer of at least {minimum}, got {str(value)[:32]}"
        )


def _open(path: Path, key: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"shared memory key '{key}' does not exist") from None
    except OSError:
        raise InvalidArgument(f"shared memory key '{key}' cannot be opened for reading and writing") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"shared memory key '{key}' is not a shared memory object")
    return fd


def _check_bounds(fd: int, status: RegionStatus) -> None:
    size = os.fstat(fd).st_size
    if status.offset > size or status.byte_size > size - status.offset:
        raise InvalidArgument(
            f"shared memory region '{status.name}': offset {status.offset} + byte_size {status.byte_size} "
            f"is out of bounds of the {size}-byte object '{status.key}'"
        )
