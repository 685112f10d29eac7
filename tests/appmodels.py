"""Builds model repositories of small Python member models for the application tests, and calls
the applications' REST face."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.serverproc import ServerProcess

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


X = [1.0, 2.0, 3.0, 4.0]


def call(server: ServerProcess, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def predict(server: ServerProcess, app: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = call(server, "POST", f"/{app}/predict", body)
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]
