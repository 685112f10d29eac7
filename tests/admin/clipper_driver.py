"""Clipper's own clipper_admin 0.4.1 driving a running clipperd, as a Clipper user's script would;
run by tests/admin/test_clipper_admin.py in the virtual environment of
scripts/install-clipper-admin.sh (clipper_admin and its imports), never in the project's.

    python tests/admin/clipper_driver.py HTTP_ADDRESS REPOSITORY METRICS_ADDRESS

Prints one JSON object: what each call answered (or the ClipperException it raised), for the
test to check."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import requests  # type: ignore[import-untyped,unused-ignore]
from clipper_admin import ClipperConnection, ClipperException

from clipperd_admin.clipper import ClipperdContainerManager

X = [1.0, 2.0, 3.0, 4.0]


def refusal(call: Callable[[], Any]) -> str:
    """The message of the ClipperException ``call`` raises ("" if it raised none)."""
    try:
        call()
    except ClipperException as error:
        return str(error)
    return ""


def predict(conn: ClipperConnection, app: str) -> Any:
    url = f"http://{conn.get_query_addr()}/{app}/predict"
    answer = requests.post(url, headers={"Content-type": "application/json"}, data=json.dumps({"input": X}))
    return answer.json()


def main() -> int:
    address, repository, metrics = sys.argv[1:4]
    conn = ClipperConnection(ClipperdContainerManager(address, repository, metrics_address=metrics))
    out: dict[str, Any] = {"before_connect": refusal(conn.get_all_apps)}
    conn.connect()
    conn.register_application("clipper-app", "floats", "-1.0", 200000)
    out["apps_empty_links"] = conn.get_linked_models("clipper-app")
    conn.register_model("m", "1", "floats")
    conn.register_model("m", 2, "floats", labels=["a", "b"])  # version 2 becomes the current one
    conn.link_model_to_app("clipper-app", "m")
    out["apps"] = conn.get_all_apps()
    out["apps_verbose"] = conn.get_all_apps(verbose=True)
    out["app_info"] = conn.get_app_info("clipper-app")
    out["app_info_unknown"] = conn.get_app_info("nope")
    out["linked"] = conn.get_linked_models("clipper-app")
    out["models"] = conn.get_all_models()
    out["models_verbose"] = conn.get_all_models(verbose=True)
    out["model_info"] = conn.get_model_info("m", 2)
    out["model_info_unknown"] = conn.get_model_info("m", 9)
    out["current_before"] = conn.get_current_model_version("m")
    out["predict_v2"] = predict(conn, "clipper-app")
    conn.set_model_version("m", 1)
    out["current_after"] = conn.get_current_model_version("m")
    out["predict_v1"] = predict(conn, "clipper-app")
    out["metrics"] = conn.inspect_instance()
    out["query_addr"], out["metric_addr"] = conn.get_query_addr(), conn.get_metric_addr()
    model_data = tempfile.mkdtemp()  # build_and_deploy_model tars it before it asks for Docker
    out["errors"] = {
        "link_unknown_model": refusal(lambda: conn.link_model_to_app("clipper-app", "ghost")),
        "register_unknown_model": refusal(lambda: conn.register_model("ghost", "1", "floats")),
        "register_unknown_version": refusal(lambda: conn.register_model("m", "v3", "floats")),
        "register_wrong_type": refusal(lambda: conn.register_model("m", "3", "strings")),
        "duplicate_app": refusal(lambda: conn.register_application("clipper-app", "floats", "-1", 1000)),
        "set_unknown_version": refusal(lambda: conn.set_model_version("m", "7")),
        "linked_unknown_app": refusal(lambda: conn.get_linked_models("nope")),
        "build_and_deploy": refusal(
            lambda: conn.build_and_deploy_model("n", "1", "floats", model_data, "clipper/python-closure-container")
        ),
        "deploy_model": refusal(lambda: conn.deploy_model("n", "1", "floats", "some/image:1")),
        "set_num_replicas": refusal(lambda: conn.set_num_replicas("m", 3, "1")),
        "get_num_replicas": refusal(lambda: conn.get_num_replicas("m", "1")),
        "stop_models": refusal(lambda: conn.stop_models(["m"])),
        "start_clipper": refusal(conn.start_clipper),
    }
    conn.unlink_model_from_app("clipper-app", "m")
    out["linked_after_unlink"] = conn.get_linked_models("clipper-app")
    conn.unregister_application("clipper-app")
    out["apps_after_unregister"] = conn.get_all_apps()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
