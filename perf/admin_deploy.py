"""How long a deploy takes, from the call until the new version answers: clipperd_admin's
deploy_python_function against a real server in explicit mode and in poll mode.

    PYTHONPATH=$PWD .venv/bin/python perf/admin_deploy.py --deploys 10

Prints the first deploy's time (it creates the model; the server imports the Python backend's
modules) and the median and slowest of the later ones (new versions) per mode, and checks each deployed
version's answer through tritonclient."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from clipperd_admin import ClipperdAdmin
from tests.serverproc import running

INPUTS = [("X", "FP32", [8])]
OUTPUTS = [("Y", "FP32", [8])]


def adder(offset: float) -> Callable[[np.ndarray], np.ndarray]:
    def function(x: np.ndarray) -> np.ndarray:
        return x + np.float32(offset)

    return function


def check(url: str, offset: float) -> None:
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("X", [1, 8], "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("timed", [tensor]).as_numpy("Y")
    np.testing.assert_array_equal(got, x + np.float32(offset))


def run_mode(mode: str, deploys: int, poll_secs: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        repo, logs = Path(tmp) / "repo", Path(tmp) / "logs"
        repo.mkdir()
        logs.mkdir()
        args = ["--model-control-mode", mode]
        if mode == "poll":
            args += ["--repository-poll-secs", str(poll_secs)]
        with running(repo, *args, log_dir=logs) as server:
            admin = ClipperdAdmin(repo, server.http_url, control_mode=mode)
            times = []
            for i in range(deploys):
                start = time.perf_counter()
                admin.deploy_python_function("timed", adder(float(i)), INPUTS, OUTPUTS)
                times.append(time.perf_counter() - start)
                check(server.url, float(i))
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=10, help="at least 2")
    parser.add_argument("--poll-secs", type=float, default=0.5, help="the poll-mode server's --repository-poll-secs")
    args = parser.parse_args()
    print(f"{'mode':<10}{'deploys':>8}{'first ms':>10}{'median ms (rest)':>18}{'max ms (rest)':>15}")
    for mode in ("explicit", "poll"):
        first, *rest = run_mode(mode, args.deploys, args.poll_secs)
        median, slowest = statistics.median(rest) * 1e3, max(rest) * 1e3
        print(f"{mode:<10}{len(rest) + 1:>8}{first * 1e3:>10.1f}{median:>18.1f}{slowest:>15.1f}")


if __name__ == "__main__":
    main()
