"""The client side of tests/server/test_access_netns.py, run inside the test's network namespace
(``ip netns exec NS python -m tests.netns_client ...``): one call of each API over gRPC and HTTP
(tritonclient, urllib and clipperd_admin, as users call them), printed as one JSON object
``{call: "ok" | the gRPC status name | the HTTP status}``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from clipperd_admin import ClipperdAdmin, ServerError

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment


def _grpc_outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except InferenceServerException as error:
        return str(error.status()).removeprefix("StatusCode.")
    return "ok"


def _http_outcome(url: str, method: str, body: Any, headers: dict[str, str]) -> str:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **headers}, method=method)
    try:
        with _DIRECT.open(request, timeout=30) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        return str(error.code)
    return "ok"


def grpc_calls(url: str, headers: dict[str, str], key: str, region: str) -> dict[str, str]:
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    infer_input = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    infer_input.set_data_from_numpy(data)
    in_region = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    in_region.set_shared_memory(region, 64)  # a region another client registered on the server's machine
    calls: dict[str, Callable[[], Any]] = {
        "infer": lambda: client.infer("identity_fp32", [infer_input]),
        "infer_region": lambda: client.infer("identity_fp32", [in_region], headers=headers),
        "ready": client.is_server_ready,
        "metadata": lambda: client.get_model_metadata("identity_fp32"),
        "config": lambda: client.get_model_config("identity_fp32"),
        "statistics": lambda: client.get_inference_statistics("identity_fp32"),
        "index": lambda: client.get_model_repository_index(headers=headers),
        "load": lambda: client.load_model("identity_fp32", headers=headers),
        "unload": lambda: client.unload_model("simple", headers=headers),
        "shm_register": lambda: client.register_system_shared_memory("netns", key, 64, headers=headers),
        "shm_status": lambda: client.get_system_shared_memory_status(headers=headers),
        "shm_unregister": lambda: client.unregister_system_shared_memory("netns", headers=headers),
        "trace_read": client.get_trace_settings,
        "trace_update": lambda: client.update_trace_settings(settings={"log_frequency": "0"}, headers=headers),
    }
    try:
        return {f"grpc.{name}": _grpc_outcome(call) for name, call in calls.items()}
    finally:
        client.close()


def http_calls(url: str, headers: dict[str, str], key: str, region: str) -> dict[str, str]:
    base = f"http://{url}"
    infer = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    shm_params = {"shared_memory_region": region, "shared_memory_byte_size": 64}
    infer_region = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": shm_params}]}
    calls = {
        "infer": ("POST", "/v2/models/identity_fp32/infer", infer),
        "infer_region": ("POST", "/v2/models/identity_fp32/infer", infer_region),
        "ready": ("GET", "/v2/health/ready", None),
        "metadata": ("GET", "/v2/models/identity_fp32", None),
        "statistics": ("GET", "/v2/models/stats", None),
        "index": ("POST", "/v2/repository/index", {}),
        "load": ("POST", "/v2/repository/models/identity_fp32/load", {}),
        "shm_register": ("POST", "/v2/systemsharedmemory/region/netns_http/register", {"key": key, "byte_size": 64}),
        "shm_status": ("GET", "/v2/systemsharedmemory/status", None),
        "shm_unregister": ("POST", "/v2/systemsharedmemory/region/netns_http/unregister", {}),
        "applications": ("GET", "/admin/applications", None),
        "clipper_admin": ("POST", "/admin/get_all_applications", {"verbose": False}),  # Clipper's management
        "trace_read": ("GET", "/v2/trace/setting", None),
        "trace_update": ("POST", "/v2/models/identity_fp32/trace/setting", {"log_frequency": "0"}),
    }
    return {
        f"http.{name}": _http_outcome(base + path, method, body, headers)
        for name, (method, path, body) in calls.items()
    }


def admin_calls(url: str, token: str | None) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as repository:  # the client needs a folder; nothing is written
        admin = ClipperdAdmin(repository, url, control_mode="explicit", token=token)
    outcomes = {}
    calls = (("admin.list_models", admin.list_models), ("admin.apps", admin.applications.list_applications))
    for name, call in calls:
        try:
            call()
            outcomes[name] = "ok"
        except ServerError as error:
            outcomes[name] = str(error.status)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--region", required=True, help="a region registered by another client")
    args = parser.parse_args()
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    key = f"/clipperd_netns_{uuid.uuid4().hex[:12]}"
    region = shm.create_shared_memory_region(key[1:], key, 64)
    try:
        outcomes = grpc_calls(args.grpc, headers, key, args.region)
        outcomes.update(http_calls(args.http, {k.title(): v for k, v in headers.items()}, key, args.region))
    finally:
        shm.destroy_shared_memory_region(region)
    outcomes.update(admin_calls(args.http, args.token))
    outcomes["metrics"] = _http_outcome(f"http://{args.metrics}/metrics", "GET", None, {})
    json.dump(outcomes, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
