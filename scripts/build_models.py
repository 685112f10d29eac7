"""Builds the example repository's binary models. Rerunnable: same seed, same weights.

    python scripts/build_models.py [--repository model_repository]

Writes model_repository/mlp_torch/1/model.pt: a TorchScript MLP 64 -> 256 -> 256 -> 10 with ReLU,
initialised from torch.manual_seed(0); rebuilt in the same checkout the file is byte-identical (its
debug information names the build script's path, so another checkout differs there only)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


class MLP(nn.Module):  # type: ignore[misc]  # torch is untyped here (mypy skips it)
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_mlp(path: Path) -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    with warnings.catch_warnings():
        # torch.jit is deprecated, but TorchScript is what Triton's pytorch_libtorch serves
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # torch.jit.save's archive (its serialization_id) depends on str hashing: pin the seed so
        # that a rebuild writes the same bytes, not only the same weights
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()
    build_mlp(args.repository / "mlp_torch" / "1" / "model.pt")


if __name__ == "__main__":
    main()
