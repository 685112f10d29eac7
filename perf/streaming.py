"""Streamed answers against unary inferences, in the same run on the same server: answers per
second of a decoupled model that sends ``--answers`` answers per request over gRPC
ModelStreamInfer (perf_analyzer ``--streaming``), and inferences per second of identity_fp32
over unary ModelInfer, both at ``--concurrency``. The issue's target: streamed answers/s at
least half the unary infer/s.

    PYTHONPATH=$PWD .venv/bin/python perf/streaming.py [--answers 100] [--concurrency 4] \\
        [--interval-ms 5000] [--model repeat_int32|repeat_generator]

The decoupled models are examples/triton's repeat models (Triton's response senders on a
thread of the model, or a clipperd async generator), with IN and DELAY of ``--answers`` zeros:
each request is answered ``--answers`` times as fast as the model can send."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import EXAMPLES, perf_analyzer, running  # noqa: E402

TRITON_EXAMPLES = ROOT / "examples" / "triton"


def measure(url: str, model: str, extra: list[str], concurrency: int, interval_ms: int) -> dict[str, float]:
    """perf_analyzer's client throughputs (``Throughput`` and, for a decoupled model,
    ``Response Throughput``) per second."""
    command = [
        str(perf_analyzer()), "-m", model, "-u", url, "-i", "grpc", *extra,
        "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
        "--stability-percentage", "25", "--max-trials", "10",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    found = dict(re.findall(r"^\s*((?:Response )?Throughput): ([\d.]+) infer/sec", done.stdout, re.MULTILINE))
    return {key: float(value) for key, value in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=100, help="answers per streamed request")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--interval-ms", type=int, default=5000, help="perf_analyzer's measurement window")
    parser.add_argument("--model", default="repeat_int32", choices=("repeat_int32", "repeat_generator"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, logs = Path(tmp) / "repo", Path(tmp) / "logs"
        logs.mkdir()
        shutil.copytree(EXAMPLES / "identity_fp32", repo / "identity_fp32")
        shutil.copytree(TRITON_EXAMPLES / args.model, repo / args.model)
        with running(repo, log_dir=logs) as server:
            unary = measure(server.url, "identity_fp32", [], args.concurrency, args.interval_ms)
            shapes = ["--shape", f"IN:{args.answers}", "--shape", f"DELAY:{args.answers}", "--input-data", "zero"]
            streamed = measure(server.url, args.model, ["--streaming", *shapes], args.concurrency, args.interval_ms)
    answers = streamed.get("Response Throughput", 0.0)
    ratio = answers / unary["Throughput"] if unary.get("Throughput") else 0.0
    print(f"unary identity_fp32 (ModelInfer, c={args.concurrency}): {unary['Throughput']:.0f} infer/s")
    print(
        f"streamed {args.model} ({args.answers} answers per request, c={args.concurrency}): "
        f"{answers:.0f} answers/s ({streamed.get('Throughput', 0.0):.1f} requests/s)"
    )
    print(f"ratio: {ratio:.2f} (target >= 0.5): {'met' if ratio >= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
