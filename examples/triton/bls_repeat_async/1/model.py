"""bls_repeat with ``async def execute``: ``await async_exec(decoupled=True)`` gives an async
iterator of the target's responses (``async for``), the requests of a batch at once."""

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.target = parameters["target_model"]["string_value"]

    async def execute(self, requests):
        return list(await asyncio.gather(*(self.forward(request) for request in requests)))

    async def forward(self, request):
        values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
        take = int(pb_utils.get_input_tensor_by_name(request, "TAKE").as_numpy()[0])
        call = pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=[
                pb_utils.Tensor("IN", values),
                pb_utils.Tensor("DELAY", delays),
                pb_utils.Tensor("WAIT", np.zeros([1], np.uint32)),
            ],
            requested_output_names=["OUT"],
        )
        total = answers = responses = 0
        iterator = await call.async_exec(decoupled=True)
        async for response in iterator:
            responses += 1
            if response.has_error():
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(response.error().message()))
            if len(response.output_tensors()) > 0:
                total += int(pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy()[0])
                answers += 1
            if answers == take:
                iterator.cancel()  # the target's request is cancelled
                break
        outputs = [
            pb_utils.Tensor("SUM", np.array([total], np.int32)),
            pb_utils.Tensor("ANSWERS", np.array([answers], np.int32)),
            pb_utils.Tensor("RESPONSES", np.array([responses], np.int32)),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)
