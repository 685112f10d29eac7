"""A BLS request as the target sees it (backends/triton_utils.py ``_bls_call``): its request id,
and its ``correlation_id`` and ``flags`` as the target's sequence parameters; a correlation id
that is neither an integer nor a string, or parameters that are not a JSON object, are the
model's error (TritonModelException), not something sent on. In-process."""

from __future__ import annotations

import numpy as np
import pytest

from backends import triton_utils as pb


def request(**kwargs: object) -> pb.InferenceRequest:
    inputs = [pb.Tensor("IN", np.array([[1]], np.int32))]
    return pb.InferenceRequest(model_name="target", inputs=inputs, requested_output_names=["OUT"], **kwargs)  # type: ignore[arg-type]


def test_id_correlation_and_flags_become_the_targets_request() -> None:
    flags = pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START | pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
    call = pb._bls_call(request(request_id="r-1", correlation_id="chat-5", flags=flags, parameters={"k": 1}))
    assert call.request_id == "r-1"
    assert dict(call.parameters) == {"k": 1, "sequence_id": "chat-5", "sequence_start": True, "sequence_end": True}


def test_no_sequence_adds_no_parameters() -> None:
    assert dict(pb._bls_call(request()).parameters) == {}


@pytest.mark.parametrize("correlation", [1.5, True, [1], None])
def test_a_bad_correlation_id_is_the_models_error(correlation: object) -> None:
    with pytest.raises(pb.TritonModelException, match="correlation_id must be an integer or a string"):
        pb._bls_call(request(correlation_id=correlation))


@pytest.mark.parametrize("parameters", ["[1, 2]", "3", "not json"])
def test_parameters_must_be_a_json_object(parameters: str) -> None:
    with pytest.raises(pb.TritonModelException, match="parameters are not"):
        pb._bls_call(request(parameters=parameters))
