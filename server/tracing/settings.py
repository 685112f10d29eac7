"""Triton's trace settings: trace_level, trace_rate, trace_count, log_frequency, trace_file,
global and per model, as ``--trace-config`` sets them at start and the TraceSetting API (gRPC
``TraceSetting``, HTTP ``/v2[/models/{m}]/trace/setting``) reads and updates them.

A model's settings are the global ones overlaid by what was set for that model; clearing a
model's setting (JSON null, an empty gRPC value) makes it follow the global one again. Each
scope (the global one, a model with settings of its own) counts its requests for the 1-of-N
sampling and its remaining ``trace_count``, as Triton's do."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from backends.common.errors import InvalidArgument

LEVEL, RATE, COUNT, FREQUENCY, FILE = "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file"
OFF, TIMESTAMPS, TENSORS = "OFF", "TIMESTAMPS", "TENSORS"
UPDATABLE = (LEVEL, RATE, COUNT, FREQUENCY)
MAX_RATE = 2**32 - 1  # Triton's uint32
MAX_COUNT = 2**31 - 1  # Triton's int32; -1: no limit
MAX_NAME_CHARS = 64  # of a name quoted back in an error

Update = dict[str, list[str] | None]  # setting -> its new value as strings; None clears it


@dataclass(frozen=True)
class Values:
    """One scope's settings, parsed: ``levels`` empty means OFF."""

    levels: tuple[str, ...] = ()
    rate: int = 1000  # Triton's default: 1 of every 1000 requests
    count: int = -1  # traces still to take; -1: no limit
    log_frequency: int = 0


def _quoted(text: str) -> str:
    return repr(text[:MAX_NAME_CHARS])


def parse_levels(values: list[str]) -> tuple[str, ...]:
    """Triton's levels: OFF alone, or TIMESTAMPS (TENSORS is Triton's, not traced here)."""
    if not values:
        raise InvalidArgument("trace_level: expected a list of levels (OFF or TIMESTAMPS), got an empty one")
    levels = []
    for value in values:
        if value == OFF:
            if len(values) > 1:
                raise InvalidArgument("trace_level: OFF must be the only level given")
            return ()
        if value == TENSORS:
            raise InvalidArgument("trace_level: TENSORS is not supported by clipperd (it traces TIMESTAMPS)")
        if value != TIMESTAMPS:
            raise InvalidArgument(f"trace_level: unknown level {_quoted(value)} (known: OFF, TIMESTAMPS)")
        levels.append(value)
    return tuple(dict.fromkeys(levels))


def _whole(name: str, values: list[str], low: int, high: int, meaning: str) -> int:
    if len(values) != 1:
        raise InvalidArgument(f"{name}: expected one value, got {len(values)}")
    text = values[0]
    try:
        number = int(text, 10)
    except ValueError:
        raise InvalidArgument(f"{name}: expected a whole number ({meaning}), got {_quoted(text)}") from None
    if not low <= number <= high:
        raise InvalidArgument(f"{name}: expected {meaning}, from {low} to {high}, got {number}")
    return number


def parse_value(name: str, values: list[str]) -> object:
    """One setting's value from its strings; InvalidArgument with the reason."""
    if name == LEVEL:
        return parse_levels(values)
    if name == RATE:
        return _whole(RATE, values, 1, MAX_RATE, "1 of that many requests is traced")
    if name == COUNT:
        return _whole(COUNT, values, -1, MAX_COUNT, "how many more traces to take, -1 for no limit")
    if name == FREQUENCY:
        return _whole(FREQUENCY, values, 0, MAX_RATE, "Triton's trace-file frequency, unused by OTLP export")
    if name == FILE:
        raise InvalidArgument("trace_file can not be updated through the API (clipperd exports traces over OTLP)")
    raise InvalidArgument(f"unknown trace setting {_quoted(name)} (known: {', '.join(UPDATABLE)}, {FILE})")


def parse_update(update: Mapping[str, list[str] | None]) -> dict[str, object | None]:
    """Every setting of ``update`` checked (all or nothing); None: clear it."""
    return {name: None if values is None else parse_value(name, values) for name, values in update.items()}


def _with(values: Values, changes: Mapping[str, object]) -> Values:
    known = {LEVEL: "levels", RATE: "rate", COUNT: "count", FREQUENCY: "log_frequency"}
    return Values(**{**values.__dict__, **{known[k]: v for k, v in changes.items()}})


@dataclass
class Scope:
    """The settings one request is sampled by, with its counters."""

    values: Values
    seen: int = 0  # requests counted for the 1-of-N rate
    remaining: int = -1  # traces still to take (-1: no limit)

    def __post_init__(self) -> None:
        self.remaining = self.values.count

    def sample(self) -> bool:
        """Triton's rule: the rate's every N-th request, while the count lasts."""
        if not self.values.levels or self.remaining == 0:
            return False
        self.seen += 1
        if self.seen % self.values.rate:
            return False
        if self.remaining > 0:
            self.remaining -= 1
        return True


@dataclass
class TraceSettings:
    """The global settings and the models' own, with a scope per model that has settings."""

    global_scope: Scope = field(default_factory=lambda: Scope(Values()))
    overrides: dict[str, dict[str, object]] = field(default_factory=dict)
    scopes: dict[str, Scope] = field(default_factory=dict)
    file: str = ""  # Triton's trace_file: reported, never written (OTLP export)

    @property
    def on(self) -> bool:
        """Whether some scope may trace (the transports' one check per request)."""
        scopes = (self.global_scope, *self.scopes.values())
        return any(scope.values.levels and scope.remaining != 0 for scope in scopes)

    def scope(self, model: str) -> Scope:
        return self.scopes.get(model, self.global_scope)

    def current(self, model: str = "") -> tuple[Values, int]:
        """A scope's settings and its remaining count."""
        scope = self.scope(model) if model else self.global_scope
        return scope.values, scope.remaining

    def update(self, model: str, changes: Mapping[str, object | None]) -> None:
        """Applies parsed changes (parse_update) to the global settings, or to ``model``'s."""
        if not model:
            cleared = [k for k, v in changes.items() if v is None]
            if cleared:
                raise InvalidArgument(f"{cleared[0]}: a global setting can not be cleared, only changed")
            self.global_scope = self._rescoped(self.global_scope, _with(self.global_scope.values, changes))
            for name in list(self.scopes):
                self._refresh(name)
            return
        own = self.overrides.setdefault(model, {})
        for name, value in changes.items():
            if value is None:
                own.pop(name, None)
            else:
                own[name] = value
        self._refresh(model)

    def _refresh(self, model: str) -> None:
        """A model's scope from the global settings and its own; it keeps its counters."""
        own = self.overrides.get(model, {})
        if not own:
            self.overrides.pop(model, None)
            self.scopes.pop(model, None)
            return
        values = _with(self.global_scope.values, own)
        old = self.scopes.get(model)
        self.scopes[model] = Scope(values) if old is None else self._rescoped(old, values)

    @staticmethod
    def _rescoped(old: Scope, values: Values) -> Scope:
        """New values; the request counter kept, the remaining count reset when the count changed."""
        scope = Scope(values, old.seen)
        if values.count == old.values.count:
            scope.remaining = old.remaining
        return scope


def as_strings(values: Values, remaining: int) -> dict[str, list[str]]:
    """A scope's settings as Triton's gRPC answer gives them: every value a list of strings."""
    return {
        LEVEL: list(values.levels) or [OFF],
        RATE: [str(values.rate)],
        COUNT: [str(remaining)],
        FREQUENCY: [str(values.log_frequency)],
    }
