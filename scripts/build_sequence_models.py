"""Builds the sequence-batching example models' files. Rerunnable: the graphs have no weights, so
every build computes the same answers.

    python scripts/build_sequence_models.py [--repository examples/triton]

Writes seq_state_onnx/1/model.onnx: an accumulator whose sum is implicit state (ONNX, opset 17,
built with onnx.helper): OUTPUT = ACC + INPUT and ACC_OUT = OUTPUT, every tensor [batch, 1] FP32.
The server zeroes ACC at a sequence's start and feeds ACC_OUT back as ACC.

Writes seq_state_torch/1/model.pt: the same accumulator in TorchScript taking the control inputs
as tensors: OUTPUT = ACC * (1 - START) + INPUT * READY, ACC_OUT = OUTPUT (a padded slot, READY
0, adds nothing). Each model's config.pbtxt sits beside it in the repository."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


class Accumulator(nn.Module):  # type: ignore[misc]  # torch is untyped here (mypy skips it)
    def forward(
        self, INPUT: torch.Tensor, START: torch.Tensor, READY: torch.Tensor, ACC: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = ACC * (1.0 - START) + INPUT * READY
        return total, total.clone()


def build_torch(path: Path) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated, but TorchScript is what Triton's pytorch_libtorch serves
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Accumulator().eval())
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def build_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1])

    nodes = [
        helper.make_node("Add", ["ACC", "INPUT"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
    ]
    graph = helper.make_graph(
        nodes, "accumulator", [tensor("INPUT"), tensor("ACC")], [tensor("OUTPUT"), tensor("ACC_OUT")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipperd")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def build(repository: Path) -> None:
    build_onnx(repository / "seq_state_onnx" / "1" / "model.onnx")
    build_torch(repository / "seq_state_torch" / "1" / "model.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "examples" / "triton")
    build(parser.parse_args().repository)


if __name__ == "__main__":
    main()
