"""What the Prometheus metrics cost: clipperd with metrics on (and scraped every second, as
Prometheus would) against clipperd with ``--no-allow-metrics``, under NVIDIA perf_analyzer.

    .venv/bin/python perf/metrics_cost.py [--rounds 3] [--concurrency 8] [--measurement-interval 3000]
        [--scrape-interval 1.0] [--json OUT.json]

Each round starts clipperd twice on the bundled repository (127.0.0.1, fresh ports), once per
setting, the order alternating from round to round, and drives identity_fp32 over gRPC with
perf_analyzer (the same command and stability criterion as side_by_side.py). In the "on" run a
thread scrapes ``GET /metrics`` at the given interval for the whole measurement. The table gives
each round's infer/s, the medians, and on/off as the ratio of the medians and as the median of
the rounds' own ratios; the goal is a cost of at most 5 % (on/off >= 0.95)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from side_by_side import System, free_port, measure, perf_analyzer_path, project_python, running

GOAL = 0.95  # on/off infer/s


class Scraper(threading.Thread):
    """Scrapes the metrics endpoint at a fixed interval until stopped; keeps what each took."""

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(name="scraper", daemon=True)
        self.url = url
        self.interval_s = interval_s
        self.durations_ms: list[float] = []
        self.errors = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.durations_ms.append((time.perf_counter() - started) * 1000)
            except OSError:
                self.errors += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def clipperd(metrics_on: bool) -> tuple[System, int]:
    port, metrics_port = free_port(), free_port()
    command = [project_python(), "-m", "server.cli", "serve", "--model-repository", "model_repository"]
    command += ["--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", "0"]
    command += ["--metrics-port", str(metrics_port)] if metrics_on else ["--no-allow-metrics"]
    return System("metrics-on" if metrics_on else "metrics-off", command, f"127.0.0.1:{port}"), metrics_port


def run_one(metrics_on: bool, args: argparse.Namespace, workspace: Path, round_no: int) -> dict[str, Any]:
    spec, metrics_port = clipperd(metrics_on)
    row: dict[str, Any] = {"setting": spec.name, "round": round_no, "loadavg_1m": round(os.getloadavg()[0], 2)}
    pa = perf_analyzer_path(args.perf_analyzer)
    with running(spec, workspace / f"{spec.name}-{round_no}.log", "grpc"):
        scraper = Scraper(f"http://127.0.0.1:{metrics_port}/metrics", args.scrape_interval) if metrics_on else None
        if scraper is not None:
            scraper.start()
        try:
            csv = workspace / f"{spec.name}-{round_no}.csv"
            row.update(measure(pa, spec.address, "grpc", args.concurrency, args.measurement_interval, csv))
        finally:
            if scraper is not None:
                scraper.stop()
                row["scrapes"] = len(scraper.durations_ms)
                row["scrape_errors"] = scraper.errors
                row["scrape_ms_median"] = (
                    round(statistics.median(scraper.durations_ms), 2) if scraper.durations_ms else None
                )
    shown = f"{row['infer_per_s']:.0f} infer/s" if "infer_per_s" in row else f"error: {row.get('error')}"
    print(f"  round {round_no} {spec.name:11} {shown}", file=sys.stderr, flush=True)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rates(setting: str) -> dict[int, float]:
        return {r["round"]: r["infer_per_s"] for r in rows if r["setting"] == setting and "infer_per_s" in r}

    on, off = rates("metrics-on"), rates("metrics-off")
    paired = [on[r] / off[r] for r in sorted(on.keys() & off.keys())]
    summary: dict[str, Any] = {"on": sorted(on.values()), "off": sorted(off.values()), "paired_ratios": paired}
    if on and off:
        summary["median_on"] = statistics.median(on.values())
        summary["median_off"] = statistics.median(off.values())
        summary["ratio_of_medians"] = summary["median_on"] / summary["median_off"]
        summary["median_paired_ratio"] = statistics.median(paired) if paired else None
        summary["goal_met"] = summary["ratio_of_medians"] >= GOAL
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--measurement-interval", type=int, default=3000, help="perf_analyzer window, ms")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (on)")
    parser.add_argument("--perf-analyzer", help="default: $CLIPPERD_PERF_ANALYZER, then .tools/pa/bin/perf_analyzer")
    parser.add_argument("--json", help="write every run and the summary here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not perf_analyzer_path(args.perf_analyzer).exists():
        sys.exit(f"perf_analyzer not found at {perf_analyzer_path(args.perf_analyzer)}")
    workspace = Path(tempfile.mkdtemp(prefix="clipperd-metrics-cost-"))
    print(f"logs and CSVs in {workspace}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        order = (True, False) if round_no % 2 else (False, True)
        rows += [run_one(on, args, workspace, round_no) for on in order]
    summary = summarize(rows)
    print(f"\nidentity_fp32, gRPC, concurrency {args.concurrency}, {args.rounds} rounds")
    print(f"metrics on  (scraped every {args.scrape_interval:g} s): {', '.join(f'{v:.0f}' for v in summary['on'])}")
    print(f"metrics off (--no-allow-metrics):   {', '.join(f'{v:.0f}' for v in summary['off'])}")
    if "ratio_of_medians" in summary:
        paired = ", ".join(f"{r:.3f}" for r in summary["paired_ratios"])
        print(f"median on {summary['median_on']:.0f} / off {summary['median_off']:.0f} infer/s")
        print(f"on/off: {summary['ratio_of_medians']:.3f} (ratio of medians); rounds: {paired}")
        print(f"goal on/off >= {GOAL}: {'met' if summary['goal_met'] else 'MISSED'}")
    scrapes = [r for r in rows if r.get("scrape_ms_median") is not None]
    if scrapes:
        print(f"scrape time, median per run: {', '.join(str(r['scrape_ms_median']) + ' ms' for r in scrapes)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
