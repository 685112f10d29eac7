"""The one reader of a model config's ``parameters`` (backends/common/parameters.py): typed
getters, ASCII digits only, bounds, and one error that names the model, the key and the value
(cut short). Through a real server: tests/schedulers/test_idle_inline.py (a bad value fails the load)."""

from __future__ import annotations

import pytest

from backends.common.errors import ConfigError, InvalidArgument
from backends.common.parameters import INT_MAX, Parameters
from backends.proto import model_config_pb2 as mc


def params(**values: str) -> Parameters:
    return Parameters("m", values)


def error(call: object) -> str:
    assert callable(call)
    with pytest.raises(InvalidArgument) as caught:
        call()
    assert isinstance(caught.value, ConfigError)
    return caught.value.message


def test_absent_and_empty_give_the_default() -> None:
    p = params(n="", f=" ", b="", c="")
    assert p.integer("n", 7) == 7
    assert p.integer("absent", 7) == 7
    assert p.number("f", 1.5) == 1.5
    assert p.boolean("b", True) is True
    assert p.choice("c", ("x", "y"), "y") == "y"
    assert p.text("absent", "d") == "d"


def test_good_values() -> None:
    p = params(n=" 12 ", f="2.5e3", neg="-3", t="True", off="0", c="y")
    assert p.integer("n", 0) == 12
    assert p.integer("neg", 0, low=-5) == -3
    assert p.number("f", 0.0, low=0) == 2500.0
    assert p.boolean("t", False) is True
    assert p.boolean("off", True) is False
    assert p.choice("c", ("x", "y")) == "y"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("\u0661\u0662", "'\u0661\u0662'"),  # Arabic-Indic digits: int() takes them, a config does not mean them
        ("\uff11\uff12", "'\uff11\uff12'"),  # fullwidth digits
        ("1_000", "'1_000'"),  # int() takes the underscore
        ("+5", "'+5'"),
        ("0x10", "'0x10'"),
        ("2.0", "'2.0'"),
        ("9" * 5000, repr("9" * 32)),  # int() refuses past 4300 digits with its own error; cut to 32
        ("99999999999999999999", "'99999999999999999999'"),  # past 19 digits
        ("2147483648", "'2147483648'"),  # past the bound
        ("-1", "'-1'"),
    ],
)
def test_bad_integers_name_the_model_key_and_value(value: str, shown: str) -> None:
    message = error(lambda: params(threads=value).integer("threads", 1))
    assert message == f"model 'm': field 'parameters.threads': must be a whole number from 0 to {INT_MAX}, got {shown}"


def test_integer_bounds_and_unit() -> None:
    p = params(us="11")
    assert p.integer("us", 0, high=11) == 11
    message = error(lambda: p.integer("us", 0, low=1, high=10, unit="microseconds"))
    assert message == "model 'm': field 'parameters.us': must be a whole number of microseconds from 1 to 10, got '11'"


@pytest.mark.parametrize("value", ["nan", "inf", "-infinity", "1e999", "\u0661.5", "1_0.5", "fast", "1" * 65, "."])
def test_bad_numbers(value: str) -> None:
    message = error(lambda: params(x=value).number("x", 0.0))
    assert message == f"model 'm': field 'parameters.x': must be a number, got {value[:32]!r}"


@pytest.mark.parametrize(
    ("bounds", "value", "problem"),
    [
        ({"low": 0}, "-1", "must be a number >= 0"),
        ({"low": 0, "open_low": True}, "0", "must be a number > 0"),
        ({"low": 0, "high": 1, "open_low": True, "open_high": True}, "1", "must be a number > 0 and < 1"),
        ({"low": 0, "high": 1e6}, "1000001", "must be a number >= 0 and <= 1e+06"),
    ],
)
def test_number_bounds(bounds: dict[str, float], value: str, problem: str) -> None:
    message = error(lambda: params(x=value).number("x", 0.0, **bounds))  # type: ignore[arg-type]
    assert message == f"model 'm': field 'parameters.x': {problem}, got '{value}'"


def test_bad_boolean_and_choice() -> None:
    p = params(b="maybe", c="gpu")
    assert error(lambda: p.boolean("b", False)) == "model 'm': field 'parameters.b': must be true or false, got 'maybe'"
    message = error(lambda: p.choice("c", ("thread", "process")))
    assert message == "model 'm': field 'parameters.c': must be one of thread, process, got 'gpu'"
    assert error(lambda: params(c="Thread").choice("c", ("thread",))).endswith("got 'Thread'")  # exactly as written


def test_read_from_a_config() -> None:
    config = mc.ModelConfig(name="cfg")
    config.parameters["n"].string_value = "x" * 100
    p = Parameters.of(config)
    assert "n" in p
    assert error(lambda: p.integer("n", 0)).startswith("model 'cfg': field 'parameters.n': ")
    assert error(lambda: p.integer("n", 0)).endswith(f"got {'x' * 32!r}")
