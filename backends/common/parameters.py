"""One reader for a model config's ``parameters`` (string values, as Triton's are), used by the
schedulers and the backends alike, so that every bad value fails the load with the same message:
``model 'M': field 'parameters.KEY': must be ..., got 'VALUE'`` (the value cut to 32 characters).

Numbers are ASCII only: ``int()`` and ``float()`` also take ``'١٢'``, ``'1_000'`` and ``'infinity'``,
which no config means, and ``int()`` of a few thousand digits raises a ValueError of its own."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from backends.common.errors import ConfigError
from backends.proto import model_config_pb2 as mc

INT_MAX = 2**31 - 1  # the default upper bound: what every framework's thread or size count takes
_SPACES = " \t\r\n"
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_NUMBER_CHARS = 64  # longer than any number a config writes
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def boolean_word(text: str) -> bool | None:
    """Triton's boolean spellings (true/false, 1/0, yes/no, on/off, any case, spaces around):
    the value, or None for anything else. Config parameters and command-line flags share it."""
    word = text.strip(_SPACES).lower()
    if word in _TRUE:
        return True
    return False if word in _FALSE else None


class Parameters:
    """One model's ``parameters``: typed getters that return the default when a key is absent or
    empty, and raise ConfigError (an InvalidArgument) naming the model, the key and the value."""

    def __init__(self, model: str, values: Mapping[str, str]) -> None:
        self.model = model
        self.values = values

    @classmethod
    def of(cls, config: mc.ModelConfig) -> Parameters:
        return cls(config.name, {key: value.string_value for key, value in config.parameters.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def text(self, key: str, default: str = "") -> str:
        return self.values.get(key, "") or default

    def _given(self, key: str) -> str:
        return self.values.get(key, "").strip(_SPACES)

    def fail(self, key: str, problem: str, value: str | None = None) -> ConfigError:
        """The error for ``key``; ``value`` (the raw one when not given) is shown cut short."""
        shown = self.values.get(key, "") if value is None else value
        return ConfigError(f"model '{self.model}'", f"parameters.{key}", f"{problem}, got {shown[:32]!r}")

    def integer(self, key: str, default: int, low: int = 0, high: int = INT_MAX, unit: str = "") -> int:
        """A whole number in [low, high], ASCII digits only."""
        text = self._given(key)
        if not text:
            return default
        number = int(text) if _INTEGER.fullmatch(text) else None
        if number is None or not low <= number <= high:
            what = f"a whole number of {unit}" if unit else "a whole number"
            raise self.fail(key, f"must be {what} from {low} to {high}")
        return number

    def number(
        self,
        key: str,
        default: float,
        low: float | None = None,
        high: float | None = None,
        open_low: bool = False,
        open_high: bool = False,
    ) -> float:
        """A finite decimal number within the bounds given (``open_*``: the bound itself is out)."""
        text = self._given(key)
        if not text:
            return default
        value = float(text) if len(text) <= _NUMBER_CHARS and _NUMBER.fullmatch(text) else math.nan
        below = low is not None and (value <= low if open_low else value < low)
        above = high is not None and (value >= high if open_high else value > high)
        if not math.isfinite(value) or below or above:
            bounds = [f"{'>' if open_low else '>='} {low:g}"] if low is not None else []
            bounds += [f"{'<' if open_high else '<='} {high:g}"] if high is not None else []
            raise self.fail(key, " ".join(["must be a number", " and ".join(bounds)]).strip())
        return value

    def boolean(self, key: str, default: bool) -> bool:
        text = self._given(key)
        if not text:
            return default
        value = boolean_word(text)
        if value is None:
            raise self.fail(key, "must be true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str = "") -> str:
        """One of ``choices`` (exactly as written); ``default`` when absent."""
        text = self.values.get(key, "")
        if not text:
            return default
        if text not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}")
        return text
