"""The HTTP/2 attack figures: runs tests/server/grpc/test_h2_attacks.py against both gRPC front ends and prints
one markdown table (each case: the server's action and how long it took, RSS growth, the longest
event-loop lag of the server's own histogram, the probe's longest call), native beside grpcio.

    .venv/bin/python perf/h2_attacks.py [--keep /tmp/h2.jsonl] [-k EXPR]

The lag is a bucket bound of ``clipperd_event_loop_lag_seconds`` (the smallest bound every sample
of the attack lies under); RSS growth is read from /proc after the attack."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_suite(report: Path, expression: str | None) -> int:
    env = {**os.environ, "CLIPPERD_H2_ATTACK_REPORT": str(report), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "tests/server/grpc/test_h2_attacks.py", "-q", "-p", "no:cacheprovider"]
    if expression:
        command += ["-k", expression]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def table(rows: list[dict[str, object]]) -> str:
    cases: dict[str, dict[str, dict[str, object]]] = {}
    for row in rows:
        cases.setdefault(str(row["case"]), {})[str(row["frontend"])] = row
    lines = [
        "| case | native: action (s) | RSS MB | lag s | probe s | grpcio: action (s) | RSS MB | lag s | probe s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, by_frontend in cases.items():
        cells = [case]
        for frontend in ("native", "grpcio"):
            if frontend not in by_frontend:
                cells += ["—", "", "", ""]
                continue
            row = by_frontend[frontend]
            failed = f", {row['probe_failures']} probe failures" if row.get("probe_failures") else ""
            cells += [
                f"{row['action']} ({row['after_s']}){failed}",
                str(row["rss_growth_mb"]),
                str(row["max_loop_lag_s"]),
                str(row["probe_longest_s"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="where to keep the JSON lines (default: a temporary file)")
    parser.add_argument("-k", dest="expression", help="pytest -k expression (a subset of the cases)")
    args = parser.parse_args()
    report = args.keep or Path(tempfile.mkstemp(suffix=".jsonl")[1])
    report.write_text("")
    code = run_suite(report, args.expression)
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    print(table(rows))
    if code:
        print(f"\n(the suite exited with {code}: see its output above)")


if __name__ == "__main__":
    main()
