"""checkov (in its own environment: scripts/install-checkov.sh, `make tools`) on the Dockerfiles
and deploy/: no failed check; each check skipped on purpose says why in its annotation or comment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ROOT, refuse_in_fast_run

pytestmark = pytest.mark.e2e


def checkov() -> Path:
    configured = os.environ.get("CLIPPERD_CHECKOV")
    path = Path(configured) if configured else ROOT / ".tools" / "checkov" / "bin" / "checkov"
    if not path.is_file():
        pytest.fail(f"checkov not found at {path}: run scripts/install-checkov.sh (make tools does)")
    return path


def _reports(*args: str) -> dict[str, dict[str, Any]]:
    refuse_in_fast_run("checkov")
    # --skip-download: no call to the vendor's service (none is reachable, and none is needed)
    command = [str(checkov()), *args, "--skip-download", "--output", "json", "--compact"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout.strip(), f"checkov printed no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    parsed = json.loads(done.stdout)
    reports = parsed if isinstance(parsed, list) else [parsed]
    return {r["check_type"]: r for r in reports}


def _assert_clean(report: dict[str, Any]) -> None:
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert not failed, f"{report['check_type']}: failed checks {failed}"
    assert report["summary"]["parsing_errors"] == 0, report["results"].get("parsing_errors")
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped.get("check_result", {}).get("suppress_comment") or skipped.get("suppress_comment") or ""
        assert reason.strip(), f"{skipped['check_id']} skipped without a reason"


def test_manifests_pass_checkov() -> None:
    frameworks = ["kubernetes", *(["kustomize"] if shutil.which("kubectl") or shutil.which("kustomize") else [])]
    reports = _reports("--directory", "deploy", "--framework", *frameworks)
    assert set(reports) == set(frameworks), f"checkov ran {sorted(reports)}, not {frameworks}"
    for report in reports.values():
        _assert_clean(report)
    checked = {
        c["resource"]
        for r in reports.values()
        for kind in ("passed_checks", "skipped_checks")
        for c in r["results"][kind]
    }
    # a file checkov cannot read is left out silently: make sure each workload was checked
    workloads = ("clipperd", "clipperd-redis", "clipperd-mlp-torch", "clipperd-mlp-onnx")  # remote/: model containers
    for workload in (f"Deployment.clipperd.{name}" for name in workloads):
        assert workload in checked, f"checkov did not check {workload}"


def test_dockerfiles_pass_checkov() -> None:
    dockerfiles = sorted(p.name for p in ROOT.glob("Dockerfile*"))
    assert "Dockerfile" in dockerfiles
    args = [arg for name in dockerfiles for arg in ("--file", name)]
    report = _reports(*args, "--framework", "dockerfile")["dockerfile"]
    _assert_clean(report)
    scanned = {
        c["file_path"].lstrip("/") for kind in ("passed_checks", "skipped_checks") for c in report["results"][kind]
    }
    assert scanned == set(dockerfiles)
