"""The HTTP floor: the least a KServe v2 HTTP/REST server in Python can do on this machine.

    python perf/floor_http.py [--host 127.0.0.1] [--port 38000]

aiohttp on its default event loop, as a plain aiohttp app runs, one model (identity_fp32: FP32
INPUT0 -> OUTPUT0, dims [-1, 16], max_batch_size 64): infer parses the JSON header and echoes
the first input back as OUTPUT0, JSON or binary (Triton's binary tensor extension), without
validating it, without batching and without statistics. Health, metadata, config and model
ready answer what perf_analyzer asks before it infers. Whatever clipperd does beyond this shows
up as the distance to this server in perf/side_by_side.py --protocol http."""

from __future__ import annotations

import argparse
import json

from aiohttp import web

MODEL = "identity_fp32"
HEADER_LENGTH = "Inference-Header-Content-Length"
TENSOR = {"datatype": "FP32", "shape": [-1, 16]}
METADATA = {
    "name": MODEL,
    "versions": ["1"],
    "platform": "python",
    "inputs": [{"name": "INPUT0", **TENSOR}],
    "outputs": [{"name": "OUTPUT0", **TENSOR}],
}
CONFIG = {"name": MODEL, "max_batch_size": 64}


async def ok(request: web.Request) -> web.Response:
    return web.Response()


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "clipperd-floor", "version": "0", "extensions": ["binary_tensor_data"]})


async def model_metadata(request: web.Request) -> web.Response:
    return web.json_response(METADATA)


async def model_config(request: web.Request) -> web.Response:
    return web.json_response(CONFIG)


async def infer(request: web.Request) -> web.Response:
    body = await request.read()
    length = request.headers.get(HEADER_LENGTH)
    header = json.loads(body[: int(length)] if length else body)
    first = header["inputs"][0]
    output = {"name": "OUTPUT0", "datatype": "FP32", "shape": first["shape"]}
    answer = {"model_name": MODEL, "model_version": "1", "outputs": [output]}
    if length is None:
        output["data"] = first["data"]
        return web.json_response(answer)
    raw = body[int(length) :]
    output["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(answer).encode()
    headers = {HEADER_LENGTH: str(len(head))}
    return web.Response(body=head + raw, headers=headers, content_type="application/octet-stream")


def build_app() -> web.Application:
    app = web.Application()
    app.add_routes(
        [
            web.get("/v2/health/live", ok),
            web.get("/v2/health/ready", ok),
            web.get("/v2", server_metadata),
            web.get(f"/v2/models/{MODEL}", model_metadata),
            web.get(f"/v2/models/{MODEL}/ready", ok),
            web.get(f"/v2/models/{MODEL}/config", model_config),
            web.post(f"/v2/models/{MODEL}/infer", infer),
        ]
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=38000)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
