"""perf/side_by_side.py --baseline REV (perf/baseline.py), the way issue 15's speed check runs it:
clipperd of this checkout against clipperd run from a temporary git worktree of REV, both under
perf_analyzer, and a markdown table of new/old ratios with a verdict. One tiny configuration
(identity_fp32 alone, gRPC, concurrency 1, one round of short windows): it checks the mechanics,
not the speed. The baseline is HEAD plus a marker that its ``server`` package prints when
imported (a commit object made for the test, on no branch), so the test sees that the baseline
server ran the worktree's code and this checkout's did not; the worktree must be gone afterwards."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import EXAMPLES, ROOT, perf_analyzer

pytestmark = pytest.mark.timeout(180)

SCRIPT = ROOT / "perf" / "side_by_side.py"
RUN_TIMEOUT_S = 150
MARKER = "clipperd-baseline-test-marker"


def side_by_side(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--perf-analyzer", str(perf_analyzer()), "--logs", str(tmp_path), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def git(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    command = ["git", "-C", str(ROOT), *args]
    run = subprocess.run(command, capture_output=True, text=True, input=stdin, env=env, check=True)
    return run.stdout.strip()


def worktrees() -> str:
    return git("worktree", "list")


def marked_head(tmp_path: Path) -> str:
    """A commit (on no branch) that is HEAD with ``server/__init__.py`` printing MARKER on import."""
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "index")}  # the checkout's own index is left alone
    env |= {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost"}
    env |= {"GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
    source = git("show", "HEAD:server/__init__.py") + f'\nprint("{MARKER}", file=__import__("sys").stderr)\n'
    blob = git("hash-object", "-w", "--stdin", stdin=source)
    git("read-tree", "HEAD", env=env)
    git("update-index", "--cacheinfo", f"100644,{blob},server/__init__.py", env=env)
    tree = git("write-tree", env=env)
    return git("commit-tree", tree, "-p", "HEAD", "-m", "test: HEAD with a marker", env=env)


def test_baseline_head_against_this_checkout(tmp_path: Path) -> None:
    repository = tmp_path / "repository"  # identity_fp32 alone: both servers start in a second or two
    shutil.copytree(EXAMPLES / "identity_fp32", repository / "identity_fp32")
    out = tmp_path / "report.json"
    rev = marked_head(tmp_path)
    old = f"clipperd@{rev}"
    run = side_by_side(
        tmp_path,
        *("--systems", "clipperd", "--baseline", rev, "--protocol", "grpc", "--concurrency", "1"),
        *("--repeat", "1", "--measurement-interval", "300", "--stability-percentage", "100"),
        *("--model-repository", str(repository), "--json", str(out)),
    )
    output = f"exit {run.returncode}\nstdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, output
    report: dict[str, Any] = json.loads(out.read_text())
    measured = {e["system"] for e in report["summary"] if e.get("infer_per_s", 0) > 0}
    assert measured == {"clipperd", old}, output

    # the baseline served its worktree's code, this checkout's server its own; the worktree is gone
    assert MARKER in (tmp_path / f"{old}-grpc-round1.log").read_text()
    assert MARKER not in (tmp_path / "clipperd-grpc-round1.log").read_text()
    checkout = report["checkouts"][rev]
    assert checkout["commit"] == rev
    assert Path(checkout["package"]).parent == Path(checkout["path"]).resolve()
    assert not Path(checkout["path"]).exists()
    assert checkout["path"] not in worktrees()

    # the comparison: a markdown table with both systems, finite ratios, a verdict line
    (compared,) = report["baseline"]
    assert (compared["new"], compared["old"]) == ("clipperd", old)
    figures = {f["name"]: f for f in compared["figures"]}
    assert set(figures) == {"infer/s", "p50 ms", "p99 ms"}
    assert figures["infer/s"]["ratio_is"] == "new/old"
    assert figures["p50 ms"]["ratio_is"] == "old/new"
    assert all(math.isfinite(f["ratio"]) and f["ratio"] > 0 for f in figures.values()), compared
    assert f"| where | figure | old: {old} ({rev[:10]}) |" in run.stdout, output
    assert "| new: clipperd | ratio | ≥ 0.95 |" in run.stdout, output
    assert "| grpc c=1 | infer/s |" in run.stdout, output
    assert f"no regression (every gated ratio >= 0.95): {'PASS' if compared['passed'] else 'FAIL'}" in run.stdout


def test_a_baseline_that_is_not_a_commit_is_one_line(tmp_path: Path) -> None:
    before = worktrees()
    run = side_by_side(tmp_path, "--systems", "clipperd", "--baseline", "no-such-revision", "--concurrency", "1")
    assert run.returncode == 1
    assert run.stderr.strip() == f"side_by_side: 'no-such-revision' is not a commit of {ROOT}", run.stderr
    assert worktrees() == before


def test_only_clipperd_runs_from_another_checkout(tmp_path: Path) -> None:
    run = side_by_side(tmp_path, "--systems", "floor@HEAD", "--concurrency", "1")
    assert run.returncode == 2
    assert "unknown system 'floor@HEAD'" in run.stderr
