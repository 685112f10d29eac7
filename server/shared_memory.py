"""Triton's system shared memory extension: clients register POSIX shared-memory objects (their
``/dev/shm`` names) as named regions; a request's inputs may be read from a region and its outputs
written to one, instead of travelling in the message.

Both transports use this one registry. The codecs only pass the ``shared_memory_*`` parameters
through (an input in shared memory carries ``SHM_PLACEHOLDER`` as its data); ``SharedMemoryRegistry
.use`` resolves them for the DataPlane, and holds the regions a request uses so they cannot be
unregistered under it."""

from __future__ import annotations

import logging
import mmap
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
from server.messages import InferRequest, InferResponse, InputTensor, Param, Params

log = logging.getLogger(__name__)

SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_PLACEHOLDER = np.empty(0, dtype=np.uint8)  # an input's data until its region is read

SHM_ROOT = Path("/dev/shm")  # where Linux keeps the objects shm_open names
MAX_REGIONS = 256  # each region holds an open descriptor and a mapping
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
    """A registered region: the mapping covers it (mmap offsets must be page-aligned, so the
    mapping may start up to a page before it, at ``-start``)."""

    __slots__ = ("fd", "mapping", "start", "status", "users")

    def __init__(self, status: RegionStatus, fd: int, mapping: mmap.mmap, start: int) -> None:
        self.status = status
        self.fd = fd  # kept to check, before each use, that the object was not truncated
        self.mapping = mapping
        self.start = start
        self.users = 0  # requests in flight that read or write it

    def span(self, offset: int, byte_size: int, what: str) -> slice:
        """The mapping's bytes for ``byte_size`` bytes at ``offset`` of the region."""
        size = self.status.byte_size
        if offset > size or byte_size > size - offset:
            raise InvalidArgument(
                f"{what}: offset {offset} + byte size {byte_size} is out of bounds of shared memory "
                f"region '{self.status.name}' ({size} bytes)"
            )
        self.check_object()
        return slice(self.start + offset, self.start + offset + byte_size)

    def check_object(self) -> None:
        # touching a page past the end of a truncated object kills the process with SIGBUS
        needed = self.status.offset + self.status.byte_size
        if os.fstat(self.fd).st_size < needed:
            raise FailedPrecondition(
                f"shared memory region '{self.status.name}': the object '{self.status.key}' was truncated "
                "after it was registered; register it again"
            )

    def close(self) -> None:
        try:
            self.mapping.close()
        except BufferError:  # an array still views it: the mapping goes when that array does
            log.warning("shared memory region '%s' is still viewed; unmapped later", self.status.name)
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
            region = _map(fd, RegionStatus(name, key, offset, byte_size))
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = region

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
        """Unmaps everything (at shutdown, whoever still uses it)."""
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
                    use.targets[output.name] = (region, region.span(offset, byte_size, f"output '{output.name}'"))
        except BaseException:
            use.release()
            raise
        return use

    def _read_input(self, tensor: InputTensor, where: tuple[str, int, int], use: SharedMemoryUse) -> None:
        what = f"input '{tensor.name[:64]}'"
        region_name, offset, byte_size = where
        region = self._lookup(region_name, use)
        span = region.span(offset, byte_size, what)
        dtype = datatypes.from_wire(tensor.datatype)
        # a copy (slicing a mapping copies): the client may rewrite the region once answered
        tensor.data = array_from_raw(region.mapping[span], dtype, tensor.shape, tensor.name)

    def _lookup(self, name: str, use: SharedMemoryUse) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"unable to find system shared memory region '{name[:_NAME_LIMIT]}'")
        use.hold(region)
        return region


class SharedMemoryUse:
    """The regions one request reads and writes; a context that holds them until it exits."""

    def __init__(self) -> None:
        self.held: list[_Region] = []
        self.targets: dict[str, tuple[_Region, slice]] = {}

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
            region, span = target
            dtype = datatypes.BY_WIRE[tensor.datatype]
            if dtype.wire == "BYTES":
                data: bytes | memoryview = serialize_bytes(tensor.data)
            else:
                data = np.ascontiguousarray(tensor.data, dtype=dtype.numpy).data.cast("B")
            size = len(data)
            room = span.stop - span.start
            if size > room:
                raise InvalidArgument(
                    f"output '{tensor.name}' needs {size} bytes, but shared memory byte size {room} was "
                    f"given for it in region '{region.status.name}'"
                )
            region.check_object()  # the model ran meanwhile: the object must still cover the region
            region.mapping[span.start : span.start + size] = data
            tensor.data = np.empty(0, dtype=dtype.numpy if dtype.wire != "BYTES" else object)
            params: Params = {SHM_REGION: region.status.name, SHM_BYTE_SIZE: size}
            if span.start != region.start:
                params[SHM_OFFSET] = span.start - region.start
            tensor.parameters = params


_NO_USE = SharedMemoryUse()  # for requests without shared memory: holds nothing, writes nothing


def uses_shared_memory(request: InferRequest) -> bool:
    """Whether any tensor has parameters (most have none): only those may name a region."""
    return any(t.parameters for t in request.inputs) or any(o.parameters for o in request.outputs)


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


def _map(fd: int, status: RegionStatus) -> _Region:
    size = os.fstat(fd).st_size
    if status.offset > size or status.byte_size > size - status.offset:
        raise InvalidArgument(
            f"shared memory region '{status.name}': offset {status.offset} + byte_size {status.byte_size} "
            f"is out of bounds of the {size}-byte object '{status.key}'"
        )
    start = status.offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(fd, start + status.byte_size, offset=status.offset - start)
    except (OSError, ValueError, OverflowError) as error:
        log.warning("mmap of shared memory key %r failed: %s", status.key, error)
        raise InvalidArgument(f"shared memory region '{status.name}' cannot be mapped") from None
    return _Region(status, fd, mapping, start)
