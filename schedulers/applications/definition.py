"""An application's definition (Clipper's register_application plus the selection policy): the
JSON the admin API takes and the state store keeps, checked once here."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from backends.common.errors import AlreadyExists, InvalidArgument
from schedulers.applications.selection import POLICIES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RESERVED = {"v2", "admin", "metrics", "openapi.json", "openapi.yaml"}  # first path segments in use
MAX_SLO_MICROS = 60_000_000
MAX_MODELS = 32


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidArgument(
            f"{what} must be 1-128 letters, digits, '_', '.' or '-' (starting with a letter or digit)"
        )
    return value


def _version(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit() or int(value) < 1:
        raise InvalidArgument("a model 'version' must be a positive integer")
    return str(int(value))


@dataclass
class LinkedModel:
    name: str
    version: str = ""  # "" serves the latest ready version
    previous: list[str] = field(default_factory=list)  # earlier pins, newest last: rollback pops one

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "previous": list(self.previous)}

    @classmethod
    def from_json(cls, obj: Any) -> LinkedModel:
        if not isinstance(obj, dict):
            raise InvalidArgument("a linked model must be an object {'name', 'version'?}")
        previous = obj.get("previous", [])
        if not isinstance(previous, list):
            raise InvalidArgument("'previous' must be a list of versions")
        return cls(
            check_name(obj.get("name"), "a model 'name'"), _version(obj.get("version")), [_version(v) for v in previous]
        )


def check_default_output(value: Any) -> Any:
    scalar = (int, float, str, bool)
    if isinstance(value, scalar) or (isinstance(value, list) and value and all(isinstance(v, scalar) for v in value)):
        return value
    raise InvalidArgument("'default_output' must be a number, a string or a non-empty list of them")


def check_slo(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SLO_MICROS:
        raise InvalidArgument(f"'slo_micros' must be an integer between 1 and {MAX_SLO_MICROS}")
    return value


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InvalidArgument("'confidence_threshold' must be a number between 0 and 1")
    return float(value)


def check_policy(value: Any) -> str:
    if not isinstance(value, str) or value not in POLICIES:
        raise InvalidArgument(f"'policy' must be one of {', '.join(sorted(POLICIES))}")
    return str(value)


@dataclass
class AppDefinition:
    name: str
    models: list[LinkedModel]
    policy: str
    default_output: Any
    slo_micros: int
    confidence_threshold: float = 0.0
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "models": [m.to_json() for m in self.models],
            "policy": self.policy,
            "default_output": self.default_output,
            "slo_micros": self.slo_micros,
            "confidence_threshold": self.confidence_threshold,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, obj: Any) -> AppDefinition:
        if not isinstance(obj, dict):
            raise InvalidArgument("the body must be a JSON object")
        name = check_name(obj.get("name"), "'name'")
        if name in RESERVED:
            raise InvalidArgument(f"'name' {name!r} is reserved")
        models = obj.get("models", [])
        if not isinstance(models, list) or len(models) > MAX_MODELS:
            raise InvalidArgument(f"'models' must be a list of at most {MAX_MODELS} models")
        linked = [LinkedModel.from_json(m) for m in models]
        if len({m.name for m in linked}) != len(linked):
            raise InvalidArgument("a model is linked twice")
        if "default_output" not in obj:
            raise InvalidArgument("'default_output' is required")
        seed = obj.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InvalidArgument("'seed' must be a non-negative integer")
        return cls(
            name,
            linked,
            check_policy(obj.get("policy")),
            check_default_output(obj["default_output"]),
            check_slo(obj.get("slo_micros")),
            check_threshold(obj.get("confidence_threshold", 0.0)),
            seed,
        )

    def linked(self, model: str) -> LinkedModel | None:
        return next((m for m in self.models if m.name == model), None)

    def with_model(self, model: LinkedModel) -> AppDefinition:
        """This definition with ``model`` linked too, within the limits ``from_json`` sets."""
        if self.linked(model.name) is not None:
            raise AlreadyExists(f"model {model.name!r} is already linked to {self.name!r}")
        if len(self.models) >= MAX_MODELS:
            raise InvalidArgument(f"application {self.name!r} already links {MAX_MODELS} models, the most it may")
        return dataclasses.replace(self, models=[*self.models, model])
