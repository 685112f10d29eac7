"""BLS in Triton's dialect: calls the model named by the ``target_model`` parameter for each
request, synchronously (``exec``), and answers with its output (or its error)."""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.target = parameters["target_model"]["string_value"]
        self.input = parameters["target_input"]["string_value"]
        self.output = parameters["target_output"]["string_value"]

    def execute(self, requests):
        return [self.forward(request) for request in requests]

    def forward(self, request):
        x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
        call = pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=[pb_utils.Tensor(self.input, x)],
            requested_output_names=[self.output],
        )
        answer = call.exec()
        if answer.has_error():
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(answer.error().message()))
        y = pb_utils.get_output_tensor_by_name(answer, self.output).as_numpy()
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", y)])
