"""What reading shared memory through the descriptor costs against the mapping it replaced.

The server copies an input out of a client's region and an output into it. It used to do that
through an mmap of the region (after an fstat size check, which cannot stop a truncate racing the
copy: SIGBUS); it now does ``preadv`` into the tensor's own buffer and ``fstat`` + ``pwrite``
(server/core/shared_memory.py). This times both ways on one /dev/shm object, per tensor size, in
this process (no server: the copy is what changed, the rest of a request is the same).

    python perf/shm_copy.py [--sizes 64,65536,4194304,67108864] [--seconds 1]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
import uuid
from collections.abc import Callable

import numpy as np

SIZES = (64, 64 * 1024, 4 * 1024 * 1024, 64 * 1024 * 1024)


def mmap_read(mapping: mmap.mmap, fd: int, size: int) -> np.ndarray:
    if os.fstat(fd).st_size < size:
        raise RuntimeError("truncated")
    return np.frombuffer(mapping[0:size], dtype=np.uint8)  # slicing a mapping copies


def pread_read(fd: int, size: int) -> np.ndarray:
    out = np.empty(size, dtype=np.uint8)
    if os.preadv(fd, [out.data], 0) != size:
        raise RuntimeError("truncated")
    return out


def mmap_write(mapping: mmap.mmap, fd: int, data: memoryview) -> None:
    if os.fstat(fd).st_size < len(data):
        raise RuntimeError("truncated")
    mapping[0 : len(data)] = data


def pwrite_write(fd: int, data: memoryview) -> None:
    if os.fstat(fd).st_size < len(data):
        raise RuntimeError("truncated")
    os.pwrite(fd, data, 0)


def per_call_us(call: Callable[[], object], seconds: float) -> float:
    """The median over rounds of the mean time of one call, in µs."""
    call()
    rounds = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while True:
            call()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 5:
                break
        rounds.append(elapsed / n * 1e6)
    return statistics.median(rounds)


def measure(size: int, seconds: float) -> dict[str, float]:
    path = f"/dev/shm/clipperd_shm_copy_{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8).data, 0)
        mapping = mmap.mmap(fd, size)
        data = np.ones(size, dtype=np.uint8).data
        try:
            return {
                "read mmap": per_call_us(lambda: mmap_read(mapping, fd, size), seconds),
                "read preadv": per_call_us(lambda: pread_read(fd, size), seconds),
                "write mmap": per_call_us(lambda: mmap_write(mapping, fd, data), seconds),
                "write pwrite": per_call_us(lambda: pwrite_write(fd, data), seconds),
            }
        finally:
            mapping.close()
    finally:
        os.close(fd)
        os.unlink(path)


def shown(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    print("| size | read: mmap copy | read: preadv | write: mmap copy | write: pwrite |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        t = measure(size, args.seconds)
        cells = " | ".join(f"{t[k]:,.1f} µs" for k in ("read mmap", "read preadv", "write mmap", "write pwrite"))
        print(f"| {shown(size)} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
