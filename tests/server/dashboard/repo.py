"""The dashboard tests' repository: the example identity model, a copy of it under a hostile
name (markup that would run if the page put names in as HTML), and a model that configures
drift and feedback monitoring by its parameters."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.serverproc import EXAMPLES

IDENTITY = "identity_fp32"
HOSTILE = "<script>x<img src=x onerror=alert(1)>"  # no '/': it must be a folder's name
MONITORED = "monitored"
# parameters of the drift and feedback monitors (docs/monitoring.md, the branches 'drift' and
# 'feedback' of issue 19); a server without them ignores them, as Triton does
MONITOR_PARAMETERS = """
parameters { key: "drift_sample_rate" value: { string_value: "1.0" } }
parameters { key: "drift_reference_rows" value: { string_value: "100" } }
parameters { key: "feedback_enable" value: { string_value: "true" } }
parameters { key: "feedback_kind" value: { string_value: "regression" } }
"""


def copy_model(repository: Path, name: str, extra: str = "") -> None:
    target = repository / name
    shutil.copytree(EXAMPLES / IDENTITY, target)
    config = (target / "config.pbtxt").read_text().replace(f'name: "{IDENTITY}"', f'name: "{name}"')
    (target / "config.pbtxt").write_text(config + extra)


def dashboard_repository(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    copy_model(root, IDENTITY)
    copy_model(root, HOSTILE)
    copy_model(root, MONITORED, MONITOR_PARAMETERS)
    return root
