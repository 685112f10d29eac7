"""deploy/prometheus/clipperd-rules.yaml and deploy/grafana/clipperd.json: the rules pass
promtool (Debian's prometheus package: ``check rules`` and their unit tests), the Grafana
dashboard has the structure Grafana imports, and every metric either of them uses is on the
/metrics of a running server that has a cached model and a model with drift and feedback
parameters."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.gpu import GpuReading, GpuSampler
from server.metrics.gpu import gpu_families
from tests.server.dashboard.repo import IDENTITY, MONITOR_PARAMETERS, MONITORED, copy_model
from tests.serverproc import ROOT, ServerProcess, running

pytestmark = pytest.mark.timeout(180)

RULES = ROOT / "deploy" / "prometheus" / "clipperd-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "clipperd-rules.test.yaml"
GRAFANA = ROOT / "deploy" / "grafana" / "clipperd.json"
METRIC = re.compile(r"\b(?:nv|clipperd)_[a-z0-9_]+\b|\bup(?=\{)")
MONITORING = ("clipperd_drift_", "clipperd_monitor_", "clipperd_feedback_")
GPU = ("nv_gpu_", "nv_energy_")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run scripts/install-promtool.sh (make test does)")
    return path


def grafana() -> dict[str, Any]:
    return json.loads(GRAFANA.read_text())  # type: ignore[no-any-return]


def panels() -> list[dict[str, Any]]:
    return [p for p in grafana()["panels"] if p["type"] != "row"]


def grafana_exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


def used_names() -> set[str]:
    return {name for expr in grafana_exprs() + rule_exprs() for name in METRIC.findall(expr)}


# ---- the files themselves ------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_the_alerts_fire_when_they_should_and_only_then() -> None:
    """promtool's unit tests (clipperd-rules.test.yaml): each alert on its series after its 'for'."""
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name], cwd=RULES.parent, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {
        rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"] if "alert" in rule
    }
    assert alerts == {
        "ClipperdDown",
        "ClipperdHighFailureRate",
        "ClipperdHighP99Latency",
        "ClipperdQueueBuildUp",
        "ClipperdDriftAlarm",
        "ClipperdFeedbackChangeAlarm",
    }
    tested = {
        t["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in test.get("alert_rule_test", [])
    }
    assert tested == alerts


def test_the_grafana_dashboard_has_the_structure_grafana_imports() -> None:
    board = grafana()
    assert board["uid"] == "clipperd"
    assert isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        where = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        grid = panel["gridPos"]
        assert grid["x"] >= 0, where
        assert grid["x"] + grid["w"] <= 24, where
        assert grid["h"] > 0, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", where
            assert set(re.findall(r"\$\{?(\w+)", target["expr"])) <= {"model", "__rate_interval"}, where


def test_the_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel's query as a recording rule (Grafana's variables given values) through promtool."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$model", ".*") for e in grafana_exprs()]
    rules = {"groups": [{"name": "g", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "grafana-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_they_show_what_the_issue_asks_for() -> None:
    names = used_names()
    for wanted in (
        "nv_inference_request_success",  # request rate
        "clipperd_request_duration_seconds_bucket",  # latency
        "clipperd_queue_depth",  # queue
        "clipperd_batch_size_cap",  # batch
        "nv_cache_num_hits_per_model",  # cache
        "clipperd_drift_alarm",
        "clipperd_feedback_error_rate",
        "clipperd_feedback_change_alarm",
        "nv_gpu_utilization",
        "up",
    ):
        assert wanted in names, wanted


# ---- every name on a real server's /metrics ---------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The metric names (families and samples) on /metrics of a server with a cached model and a
    monitored one, after a request to each."""
    repository = tmp_path_factory.mktemp("rules") / "models"
    repository.mkdir()
    copy_model(repository, IDENTITY, "response_cache { enable: true }\n")
    copy_model(repository, MONITORED, MONITOR_PARAMETERS)
    logs = tmp_path_factory.mktemp("logs")
    with running(repository, "--cache-config", "local,size=1048576", log_dir=logs) as server:
        for model in (IDENTITY, MONITORED):
            _infer(server, model)
        yield _names(server)


def _infer(server: ServerProcess, model: str) -> None:
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer", body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def _names(server: ServerProcess) -> set[str]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_server_s_own_names_are_all_exported(exported: set[str]) -> None:
    names = {n for n in used_names() if not n.startswith((*MONITORING, *GPU)) and n != "up"}
    assert len(names) >= 15
    assert sorted(names - exported) == []


def test_the_gpu_names_are_those_the_gpu_exporter_writes() -> None:
    """This machine has no GPU, so the GPU families are absent from its /metrics (as they must
    be): the names are checked against what server/metrics/gpu.py writes for one GPU."""
    sampler = GpuSampler(list, 1.0)
    sampler.keep([GpuReading("GPU-x", 0.5, 2**34, 2**30, 100.0, 300.0, 10)])
    written = {m.name for m in gpu_families(sampler)}
    used = {n for n in used_names() if n.startswith(GPU)}
    assert used
    assert sorted(used - written) == []


def test_the_feedback_names_are_exported(exported: set[str]) -> None:
    used = {n for n in used_names() if n.startswith("clipperd_feedback_")}
    assert used >= {"clipperd_feedback_error_rate", "clipperd_feedback_change_alarm"}
    assert sorted(used - exported) == []


def test_the_drift_names_are_exported(exported: set[str]) -> None:
    used = {n for n in used_names() if n.startswith(("clipperd_drift_", "clipperd_monitor_"))}
    assert "clipperd_drift_alarm" in used
    assert sorted(used - exported) == []
