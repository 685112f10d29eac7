"""Soak: clipperd under a steady mixed load for minutes, its process sampled, checked for leaks.

    .venv/bin/python perf/soak.py [--minutes 10] [--warmup-minutes 1] [--sample-seconds 5]
        [--model-repository model_repository] [--server-args='--grpc-frontend grpcio'] [--json OUT.json]

Starts clipperd on the repository (127.0.0.1, free ports) and, until --minutes have passed,
drives it with:
  - perf_analyzer on identity_fp32, rounds in turn over gRPC, HTTP, gRPC with
    --shared-memory system and HTTP with --shared-memory system (three --pa-window-ms windows
    each, at --pa-concurrency), each run a new process with new connections and new regions;
  - beside it (perf/soak_load.py), every --side-interval seconds: requests that must fail over
    gRPC and HTTP (unknown model, wrong datatype, shape, rank, batch, inputs, malformed JSON,
    header lengths, unregistered regions), a good one on each that must echo its input, a
    shared-memory region made, registered (and once past its end, which must fail), used,
    unregistered and removed, and connections opened and closed (bare, after the HTTP/2 preface
    with a reset, HTTP/1.1 on a raw socket, a new gRPC channel).

Every --sample-seconds it reads the server process from /proc: RSS (VmRSS), open descriptors,
threads, and the /dev/shm objects it maps or holds; and /dev/shm itself (entries, bytes). After
each perf_analyzer cycle (the four kinds) it also takes a "quiet" sample: the side load held, no
connection left on the server's ports (/proc/net/tcp) and its descriptor count still for a second.
Descriptors and threads are compared at quiet samples, where the load's own connections are gone.
The load runs for --minutes and on until --min-quiet-samples (3) quiet samples follow the warm-up,
twice --minutes at most, so that a slow machine still gets its samples.

Checks, after the warm-up (the first quiet sample at least --warmup-minutes in, and after a full
cycle):
  - RSS: the slope of a least-squares line through every sample, at most --max-rss-mb-per-min
    (1.0); or, given --max-rss-growth-mb, the line's rise over the measured span at most that
    (a minute is too short to hold a slope to 1 MB/min; tests/perf/test_soak.py does this);
  - descriptors and threads at every quiet sample within --max-fd-drift / --max-thread-drift (2)
    of the first quiet sample after warm-up;
  - /dev/shm: the server maps or holds no more /dev/shm objects at any quiet sample than at the
    first, and no object that appeared during the soak is left after it, apart from what other
    processes on the machine made (objects the server never mapped or held are listed, not
    counted: a shared machine has other users) and the soak's own (perf_analyzer's INPUT0_*,
    OUTPUT0 and clipperd_soak_*, which their makers remove);
  - the load ran: every perf_analyzer kind succeeded at least once and at most 10 % of runs
    failed (a run past --pa-timeout is diagnosed: the server's sockets and in-flight gauge, and
    perf_analyzer's threads left, one when it has all its answers and its main thread waits on;
    then killed, and its regions unregistered); no side request got an unexpected answer (a bad
    one accepted, a good one refused);
  - the server stops on SIGTERM with status 0.
Prints the samples, the figures and PASS or FAIL; exit status 0 on PASS, 1 on FAIL."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ports import free_port
from soak_load import PA_KINDS, PA_SHM_NAMES, ROOT, SHM_PREFIX, Endpoints, SideLoad, pa_command, run_pa, unregister_all

SHM = Path("/dev/shm")
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
SETTLE_S = 1.0  # a quiet sample waits until the descriptor count has not changed for this long
SETTLE_MAX_S = 15.0
MAX_PA_FAILURES = 0.10
# the TCP states (as /proc/net/tcp writes them) in which the server's end still holds a descriptor
# whatever the server does: ESTABLISHED, CLOSE_WAIT (the client has closed, the server not yet)
TCP_HELD = {"01", "08"}


@dataclass
class Sample:
    t_s: float  # seconds since the load started
    kind: str  # "load" (taken on the clock) or "quiet" (no client connected)
    rss_kb: int
    fds: int
    threads: int
    server_shm: int  # /dev/shm objects the server maps or holds open
    shm_entries: int  # in /dev/shm, every process's
    shm_bytes: int


# the server process, read from /proc


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def server_shm_objects(pid: int) -> set[str]:
    """The /dev/shm objects the process maps (/proc/pid/maps) or holds open (/proc/pid/fd)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
            found.add(parts[5].removesuffix(" (deleted)"))
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since the listing
            target = os.readlink(fd)
            if target.startswith("/dev/shm/"):
                found.add(target.removesuffix(" (deleted)"))
    return found


def shm_listing() -> dict[str, int]:
    sizes = {}
    for entry in os.scandir(SHM):
        with contextlib.suppress(OSError):  # removed since the listing
            sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return sizes


def open_connections(ports: set[int]) -> int:
    """Connections on these local ports (the server's ends) in a state that holds a descriptor."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if int(local.rsplit(":", 1)[1], 16) in ports and state in TCP_HELD:
                    count += 1
    return count


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler:
    """Samples the server; remembers every /dev/shm object it ever saw the server hold."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.held_ever: set[str] = set()
        self.lock = threading.Lock()

    def take(self, kind: str) -> Sample:
        held = server_shm_objects(self.pid)
        listing = shm_listing()
        sample = Sample(
            t_s=round(time.monotonic() - self.t0, 2),
            kind=kind,
            rss_kb=status_field(self.pid, "VmRSS"),
            fds=fd_count(self.pid),
            threads=len(os.listdir(f"/proc/{self.pid}/task")),
            server_shm=len(held),
            shm_entries=len(listing),
            shm_bytes=sum(listing.values()),
        )
        with self.lock:
            self.held_ever |= {Path(p).name for p in held}
            self.samples.append(sample)
        return sample

    def quiet(self, ends: Endpoints) -> Sample:
        """A sample once the load's connections are closed on the server's side too (none left on
        its ports established or half-closed) and its descriptor count has been still for SETTLE_S."""
        deadline = time.monotonic() + SETTLE_MAX_S
        ports = {ends.grpc_port, ends.http_port}
        last, since = fd_count(self.pid), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = fd_count(self.pid)
            if now != last:
                last, since = now, time.monotonic()
            if time.monotonic() - since >= SETTLE_S and not open_connections(ports):
                break
        return self.take("quiet")

    def every(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.wait(interval_s):
            with contextlib.suppress(OSError, RuntimeError):  # the server is gone: the soak reports it
                self.take("load")


# the server


def start_server(repository: Path, extra: list[str], log: Path) -> tuple[subprocess.Popen[bytes], Endpoints]:
    ends = Endpoints("127.0.0.1", free_port(), free_port(), free_port())
    command = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(repository)]
    command += ["--host", ends.host, "--grpc-port", str(ends.grpc_port), "--http-port", str(ends.http_port)]
    command += ["--metrics-port", str(ends.metrics_port), *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while not server_ready(ends):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"clipperd did not get ready (status {proc.poll()}); see {log}")
            time.sleep(0.25)
    except BaseException:  # not ready, or the soak itself stopped (SIGTERM, ^C): no server left behind
        proc.kill()
        proc.wait()
        raise
    return proc, ends


def server_ready(ends: Endpoints) -> bool:
    """Every model loaded (the load begins on a server that has finished starting)."""
    try:
        with urllib.request.urlopen(f"http://{ends.http}/v2/health/ready", timeout=2.0) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def diagnose(ends: Endpoints) -> dict[str, Any]:
    """What a stuck perf_analyzer run leaves to see: the sockets on the server's ports (queues
    and TCP state) and the server's in-flight gauge."""
    found: dict[str, Any] = {}
    for name, port in (("grpc", ends.grpc_port), ("http", ends.http_port)):
        ss = ["ss", "-tnpi", "state", "all", f"( sport = :{port} or dport = :{port} )"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found[f"ss {name}"] = subprocess.run(ss, capture_output=True, text=True, timeout=10).stdout.splitlines()
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://{ends.host}:{ends.metrics_port}/metrics", timeout=5) as m,
    ):
        found["inflight"] = [line for line in m.read().decode().splitlines() if line.startswith("clipperd_inflight")]
    return found


def stop_server(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then its exit status (None: it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# the soak


def drive(args: argparse.Namespace, ends: Endpoints, sampler: Sampler, side: SideLoad) -> list[dict[str, Any]]:
    """perf_analyzer cycles, a quiet sample after each, until --minutes have passed and at least
    --min-quiet-samples quiet samples follow the warm-up (a slow machine gets more time, up to
    twice --minutes: the checks need the samples, whatever the machine's speed)."""
    pa = perf_analyzer_path(args.perf_analyzer)
    end, hard_end = sampler.t0 + args.minutes * 60, sampler.t0 + 2 * args.minutes * 60
    runs: list[dict[str, Any]] = []
    cycle, warm_quiet = 0, 0
    while time.monotonic() < hard_end and (time.monotonic() < end or warm_quiet < args.min_quiet_samples):
        cycle += 1
        for kind in PA_KINDS:
            command = pa_command(pa, ends, kind, args.pa_concurrency, args.pa_window_ms)
            timeout = min(args.pa_timeout, max(10.0, hard_end - time.monotonic()))
            with side.shm_lock if kind.endswith("-shm") else contextlib.nullcontext():
                result = run_pa(command, timeout, on_stuck=lambda: diagnose(ends))
                if result["rc"] is None and kind.endswith("-shm"):
                    result["cleanup"] = unregister_all(ends)
            runs.append({"cycle": cycle, "kind": kind, "t_s": round(time.monotonic() - sampler.t0, 1), **result})
        with side.quiet():
            quiet = sampler.quiet(ends)
        warm_quiet += quiet.t_s >= args.warmup_minutes * 60
    return runs


def perf_analyzer_path(given: str | None) -> Path:
    configured = given or os.environ.get("CLIPPERD_PERF_ANALYZER")
    return Path(configured) if configured else ROOT / ".tools" / "pa" / "bin" / "perf_analyzer"


def soak(args: argparse.Namespace, workspace: Path) -> dict[str, Any]:
    shm_before = shm_listing()
    proc, ends = start_server(Path(args.model_repository), shlex.split(args.server_args), workspace / "clipperd.log")
    sampler = Sampler(proc.pid)
    side = SideLoad(ends, args.side_interval)
    stop = threading.Event()
    clock = threading.Thread(target=sampler.every, args=(args.sample_seconds, stop), daemon=True)
    report: dict[str, Any] = {"server_pid": proc.pid, "server_log": str(workspace / "clipperd.log")}
    try:
        sampler.quiet(ends)  # before any load: the idle server
        side.start()
        clock.start()
        report["pa_runs"] = drive(args, ends, sampler, side)
    finally:
        stop.set()
        side.stop()
        clock.join()
        report["alive_at_end"] = proc.poll() is None
        report["exit_status"] = stop_server(proc)
    report["side"] = dict(sorted(side.tally.counts.items()))
    report["side_unexpected"] = side.tally.unexpected
    report["samples"] = [asdict(s) for s in sorted(sampler.samples, key=lambda s: s.t_s)]
    report["shm"] = shm_gained(shm_before, shm_listing(), sampler.held_ever)
    return report


def shm_gained(before: dict[str, int], after: dict[str, int], held_ever: set[str]) -> dict[str, Any]:
    """The /dev/shm objects that appeared during the soak and are still there, by whose."""
    gained = sorted(set(after) - set(before))
    own = [n for n in gained if n.startswith(SHM_PREFIX) or n.startswith(PA_SHM_NAMES)]
    server = [n for n in gained if n in held_ever and n not in own]
    others = [n for n in gained if n not in server and n not in own]
    return {"before": len(before), "after": len(after), "server": server, "soak_own": own, "others": others}


# the checks


def fit_rss(samples: list[Sample]) -> tuple[float, float]:
    """(slope in MB a minute, rise in MB over the span) of the least-squares line through RSS."""
    t = np.array([s.t_s / 60 for s in samples])
    rss = np.array([s.rss_kb / 1024 for s in samples])
    if len(samples) < 3 or t[-1] - t[0] <= 0:
        raise RuntimeError(f"{len(samples)} samples after the warm-up: too few to fit (a longer --minutes?)")
    slope = float(np.polyfit(t, rss, 1)[0])
    return slope, slope * float(t[-1] - t[0])


def warm_sample(samples: list[Sample], warmup_s: float, first_cycle_end: float) -> Sample:
    for s in samples:
        if s.kind == "quiet" and s.t_s >= max(warmup_s, first_cycle_end):
            return s
    raise RuntimeError("no quiet sample after the warm-up: the soak ended too early (a longer --minutes?)")


def check(report: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    samples = [Sample(**s) for s in report["samples"]]
    runs = report["pa_runs"]
    first_cycle = max((r["t_s"] for r in runs if r["cycle"] == 1), default=0.0)
    base = warm_sample(samples, args.warmup_minutes * 60, first_cycle)
    after = [s for s in samples if s.t_s >= base.t_s]
    quiet = [s for s in after if s.kind == "quiet"]
    slope, rise = fit_rss(after)
    report["figures"] = {
        "warm_at_s": base.t_s,
        "rss_mb_per_min": round(slope, 3),
        "rss_rise_mb": round(rise, 2),
        "rss_mb_first_last": [round(after[0].rss_kb / 1024, 1), round(after[-1].rss_kb / 1024, 1)],
        "fds_quiet": [s.fds for s in quiet],
        "threads_quiet": [s.threads for s in quiet],
        "server_shm_quiet": [s.server_shm for s in quiet],
        "fds_load_max": max(s.fds for s in after),
        "threads_load_max": max(s.threads for s in after),
    }
    checks = [rss_check(slope, rise, args)]
    checks += drift_checks(base, quiet, args)
    checks += [shm_check(report["shm"]), load_check(runs, report), exit_check(report)]
    return checks


def rss_check(slope: float, rise: float, args: argparse.Namespace) -> tuple[str, bool, str]:
    if args.max_rss_growth_mb is not None:
        bound = f"rise {rise:.2f} MB over the span <= {args.max_rss_growth_mb} MB (slope {slope:.2f} MB/min)"
        return "rss", rise <= args.max_rss_growth_mb, bound
    return "rss", slope <= args.max_rss_mb_per_min, f"slope {slope:.3f} MB/min <= {args.max_rss_mb_per_min}"


def drift_checks(base: Sample, quiet: list[Sample], args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    out = []
    for name, bound in (("fds", args.max_fd_drift), ("threads", args.max_thread_drift), ("server_shm", 0)):
        start = getattr(base, name)
        values = [getattr(s, name) for s in quiet]
        worst = max((v - start for v in values), key=abs, default=0)
        ok = all(-bound <= v - start <= bound for v in values) if name != "server_shm" else max(values) <= start
        out.append(
            (
                name,
                ok,
                f"{start} after warm-up, {min(values)}-{max(values)} at quiet samples (±{bound}; worst {worst:+d})",
            )
        )
    return out


def shm_check(shm: dict[str, Any]) -> tuple[str, bool, str]:
    text = f"{shm['before']} entries before, {shm['after']} after; left by the server: {shm['server'] or 'none'}"
    if shm["others"]:
        text += f"; by other processes (never held by the server, not counted): {shm['others']}"
    if shm["soak_own"]:
        text += f"; the soak's own (perf_analyzer's, not counted): {shm['soak_own']}"
    return "/dev/shm", not shm["server"], text


def load_check(runs: list[dict[str, Any]], report: dict[str, Any]) -> tuple[str, bool, str]:
    failed = [r for r in runs if r.get("rc") != 0]
    kinds_ok = {r["kind"] for r in runs if r.get("rc") == 0}
    side_unexpected = report["side_unexpected"]
    ok = set(PA_KINDS) <= kinds_ok and len(failed) <= MAX_PA_FAILURES * len(runs) and not side_unexpected
    side_total = sum(report["side"].values())
    text = f"{len(runs)} perf_analyzer runs, {len(failed)} failed; "
    text += f"{side_total} side requests, {len(side_unexpected)} unexpected"
    if failed:
        text += f"; first failure: {failed[0].get('kind')}: {failed[0].get('error')}"
    if side_unexpected:
        text += f"; first unexpected: {side_unexpected[0]}"
    return "load", ok, text


def exit_check(report: dict[str, Any]) -> tuple[str, bool, str]:
    status = report["exit_status"]
    alive = report["alive_at_end"]
    return "exit", alive and status == 0, f"alive at the end: {alive}; status after SIGTERM: {status}"


# output


def print_samples(samples: list[dict[str, Any]]) -> None:
    print(f"{'t s':>7} {'kind':5} {'RSS MB':>8} {'fds':>4} {'thr':>4} {'srv shm':>7} {'/dev/shm':>8} {'bytes':>9}")
    for s in samples:
        print(
            f"{s['t_s']:7.1f} {s['kind']:5} {s['rss_kb'] / 1024:8.1f} {s['fds']:4} {s['threads']:4} "
            f"{s['server_shm']:7} {s['shm_entries']:8} {s['shm_bytes']:9}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs")
    parser.add_argument("--warmup-minutes", type=float, default=1.0, help="not held to the checks")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="the sampling interval under load")
    parser.add_argument("--model-repository", default=str(ROOT / "model_repository"))
    parser.add_argument("--server-args", default="", help="more arguments for clipperd serve (one string)")
    parser.add_argument("--perf-analyzer", help="the binary (default $CLIPPERD_PERF_ANALYZER or .tools/pa)")
    parser.add_argument("--pa-concurrency", type=int, default=4)
    parser.add_argument("--pa-window-ms", type=int, default=500, help="a perf_analyzer run: three windows this long")
    parser.add_argument("--pa-timeout", type=float, default=30.0, help="a perf_analyzer run past this is stuck")
    parser.add_argument("--side-interval", type=float, default=0.5, help="seconds between turns of the side load")
    parser.add_argument("--min-quiet-samples", type=int, default=3, help="after the warm-up; the load runs on for them")
    parser.add_argument("--max-rss-mb-per-min", type=float, default=1.0)
    parser.add_argument("--max-rss-growth-mb", type=float, help="hold the fitted rise over the span instead")
    parser.add_argument("--max-fd-drift", type=int, default=2)
    parser.add_argument("--max-thread-drift", type=int, default=2)
    parser.add_argument("--json", help="write the samples, the runs and the checks here")
    parser.add_argument("--logs", help="keep the server's log in this folder (default: a fresh temporary one)")
    return parser.parse_args()


def stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(f"soak: stopped by signal {signum}")  # unwinds: the server is stopped on the way


def main() -> int:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    args = parse_args()
    if not perf_analyzer_path(args.perf_analyzer).exists():
        sys.exit(
            f"perf_analyzer not found at {perf_analyzer_path(args.perf_analyzer)}: run scripts/install-perf-analyzer.sh"
        )
    workspace = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="soak-"))
    workspace.mkdir(parents=True, exist_ok=True)
    machine = {"host": platform.node(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    print(f"soak: {args.minutes} min, warm-up {args.warmup_minutes} min; log in {workspace}", file=sys.stderr)
    report = soak(args, workspace)
    machine["loadavg_after"] = os.getloadavg()
    try:
        checks = check(report, args)
    except RuntimeError as error:
        checks = [("samples", False, str(error))]
    print_samples(report["samples"])
    for name, ok, text in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name:10} {text}")
    passed = all(ok for _, ok, _ in checks)
    print("PASS" if passed else "FAIL")
    if args.json:
        report |= {"command": sys.argv, "machine": machine, "checks": [list(c) for c in checks], "passed": passed}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
