"""Builds model repositories of small Python member models for the application tests."""

from __future__ import annotations

import shutil
from pathlib import Path

MODEL_PY = Path(__file__).parent / "data" / "app_models" / "model.py"

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 16
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 1 ] }} ]
dynamic_batching {{ }}
{policy}
parameters [
{parameters}
]
"""


def add_model(repository: Path, name: str, versions: int = 1, **parameters: str | float) -> None:
    """A member model; it sleeps (``delay_ms``), so it runs on a thread of its own, never on the
    event loop (the Python backend's default) where a sleep would stall the whole server."""
    parameters = {"execution_mode": "thread", **parameters}
    folder = repository / name
    folder.mkdir(parents=True)
    params = ",\n".join(f'  {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    policy = "version_policy: { all { } }" if versions > 1 else ""
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name, policy=policy, parameters=params))
    for version in range(1, versions + 1):
        (folder / str(version)).mkdir()
        shutil.copy(MODEL_PY, folder / str(version) / "model.py")
