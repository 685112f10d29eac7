"""BLS in Triton's dialect with ``async def execute``: the calls of a batch's requests are
awaited together (``async_exec``), each answered with its target's output (or its error)."""

import asyncio
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.target = parameters["target_model"]["string_value"]
        self.input = parameters["target_input"]["string_value"]
        self.output = parameters["target_output"]["string_value"]

    async def execute(self, requests):
        return list(await asyncio.gather(*(self.forward(request) for request in requests)))

    async def forward(self, request):
        x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
        call = pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=[pb_utils.Tensor(self.input, x)],
            requested_output_names=[self.output],
        )
        answer = await call.async_exec()
        if answer.has_error():
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(answer.error().message()))
        y = pb_utils.get_output_tensor_by_name(answer, self.output).as_numpy()
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", y)])
