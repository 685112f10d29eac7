"""BLS that forwards each request whole (Triton's dialect): its inputs (renamed by the
``input_map`` parameter, JSON), its request id, and its sequence (``correlation_id`` and
``flags``) go to the model named by ``target_model``; the answer's outputs come back as they
are. A sequence model in front of a sequence model: the stateful pipeline of a Triton user."""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.target = parameters["target_model"]["string_value"]
        self.renamed = json.loads(parameters.get("input_map", {}).get("string_value", "{}"))

    def execute(self, requests):
        return [self.forward(request) for request in requests]

    def forward(self, request):
        inputs = [pb_utils.Tensor(self.renamed.get(t.name(), t.name()), t.as_numpy()) for t in request.inputs()]
        call = pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=inputs,
            requested_output_names=[],
            request_id=request.request_id(),
            correlation_id=request.correlation_id(),
            flags=request.flags(),
        )
        answer = call.exec()
        if answer.has_error():
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(answer.error().message()))
        return pb_utils.InferenceResponse(output_tensors=answer.output_tensors())
