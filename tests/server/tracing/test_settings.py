"""Trace settings, --trace-config and the older trace flags, the trace API's access rules: in
process (the end-to-end export is tests/server/tracing/test_otlp_export.py)."""

from __future__ import annotations

import pytest

from backends.common.errors import InvalidArgument
from server.access import AccessPolicy
from server.cli import build_parser, main, settings_from_args
from server.tracing.config import DEFAULT_URL, parse_trace_config
from server.tracing.settings import TraceSettings, parse_update
from server.tracing.tracer import Tracing
from tests.serverproc import EXAMPLES

TOKEN = "0123456789abcdef0123"


def _settings(**update: list[str] | None) -> TraceSettings:
    settings = TraceSettings()
    settings.update("", parse_update(update))
    return settings


def test_off_by_default() -> None:
    tracing = Tracing()
    assert tracing.on is False
    assert tracing.answer() == {
        "trace_level": ["OFF"],
        "trace_rate": ["1000"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],
        "trace_file": [""],
        "trace_mode": ["opentelemetry"],
        "url": [DEFAULT_URL],
    }


def test_one_of_n_while_the_count_lasts() -> None:
    settings = _settings(trace_level=["TIMESTAMPS"], trace_rate=["4"], trace_count=["2"])
    picked = [i for i in range(1, 21) if settings.scope("m").sample()]
    assert picked == [4, 8]  # Triton's rule: every 4th, 2 traces, then none
    assert settings.current() == (settings.global_scope.values, 0)
    assert settings.on is False  # the count is spent: the transports' check is off again


def test_a_models_settings_overlay_the_global_ones_and_clear_back() -> None:
    settings = _settings(trace_level=["TIMESTAMPS"], trace_rate=["10"])
    settings.update("m", parse_update({"trace_rate": ["2"]}))
    assert settings.current("m")[0].rate == 2
    assert settings.current("m")[0].levels == ("TIMESTAMPS",)
    settings.update("", parse_update({"trace_level": ["OFF"]}))
    assert settings.current("m")[0].levels == ()  # it follows the global level it does not set
    settings.update("m", parse_update({"trace_rate": None}))
    assert "m" not in settings.scopes
    assert settings.scope("m") is settings.global_scope


def test_the_request_counter_survives_a_rate_change() -> None:
    settings = _settings(trace_level=["TIMESTAMPS"], trace_rate=["3"])
    assert [settings.scope("").sample() for _ in range(2)] == [False, False]
    settings.update("", parse_update({"trace_rate": ["3"], "log_frequency": ["5"]}))
    assert settings.scope("").sample() is True


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"trace_rate": ["0"]}, "trace_rate"),
        ({"trace_rate": ["-1"]}, "trace_rate"),
        ({"trace_rate": [str(2**32)]}, "trace_rate"),
        ({"trace_count": ["-2"]}, "trace_count"),
        ({"trace_level": []}, "empty"),
        ({"trace_level": ["timestamps"]}, "unknown level"),
        ({"log_frequency": ["-1"]}, "log_frequency"),
        ({"trace_file": ["x"]}, "can not be updated"),
        ({"nope": ["1"]}, "unknown trace setting"),
    ],
)
def test_bad_updates(update: dict[str, list[str] | None], reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        parse_update(update)


def test_a_refused_update_changes_nothing() -> None:
    tracing = Tracing()
    with pytest.raises(InvalidArgument):
        tracing.update("", {"trace_level": ["TIMESTAMPS"], "trace_rate": ["0"]})
    assert tracing.on is False
    assert tracing.answer()["trace_level"] == ["OFF"]


def test_trace_config() -> None:
    config = parse_trace_config(
        [
            "mode=opentelemetry",
            "opentelemetry,url=http://collector:4318/v1/traces",
            "opentelemetry,resource=deployment=canary",
            "opentelemetry,bsp_max_queue_size=64",
            "rate=100",
            "level=TIMESTAMPS",
            "count=5",
            "triton,log-frequency=7",
        ]
    )
    assert config.url == "http://collector:4318/v1/traces"
    assert config.resource == {"deployment": "canary"}
    assert config.max_queue_size == 64
    assert config.settings == {"trace_rate": 100, "trace_level": ("TIMESTAMPS",), "trace_count": 5, "log_frequency": 7}


def test_trace_config_pieces_split_at_commas_as_the_environment_gives_them() -> None:
    config = parse_trace_config(["opentelemetry", "url=http://h:1/v1/traces", "rate=3"])
    assert (config.url, config.settings["trace_rate"]) == ("http://h:1/v1/traces", 3)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["mode=triton"], "opentelemetry only"),
        (["triton,file=/tmp/t.json"], "writes no trace file"),
        (["rate=0"], "trace_rate"),
        (["level=VERBOSE"], "unknown level"),
        (["level=OFF", "level=TIMESTAMPS"], "OFF must be the only level"),
        (["opentelemetry,url=collector:4318"], "http"),
        (["opentelemetry,bsp_max_queue_size=0"], "bsp_max_queue_size"),
        (["opentelemetry,bsp_max_queue_size=4", "opentelemetry,bsp_max_export_batch_size=8"], "must not exceed"),
        (["jaeger,url=http://x"], "unknown mode"),
        (["sample=all"], "unknown setting"),
        (["opentelemetry"], "names no setting"),
    ],
)
def test_bad_trace_config(values: list[str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_trace_config(values)


def test_tritons_older_flags_are_trace_config_pieces() -> None:
    args = build_parser().parse_args(
        ["serve", "--trace-level", "TIMESTAMPS", "--trace-rate=100", "--trace-count", "3", "--trace-config", "count=4"]
    )
    pieces = settings_from_args(args).trace_config
    assert pieces == ["level=TIMESTAMPS", "rate=100", "count=3", "count=4"]
    assert parse_trace_config(pieces).settings["trace_count"] == 4  # the later one wins


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--trace-file", "/tmp/trace.json"], "writes no trace file"),
        (["--trace-rate", "0"], "trace_rate"),
        (["--trace-config", "level=LOUD"], "unknown level"),
    ],
)
def test_bad_trace_flags_exit_2(flags: list[str], reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model-repository", str(EXAMPLES), *flags])
    assert exit_.value.code == 2
    assert reason in capsys.readouterr().err.strip().splitlines()[-1]


def test_reading_trace_settings_is_open_updating_them_is_management() -> None:
    policy = AccessPolicy(token=TOKEN)
    assert policy.grpc_rule("TraceSetting") is None  # reading: open to all
    assert policy.http_rule("/v2/trace/setting", "GET") is None
    assert policy.http_rule("/v2/models/{model}/trace/setting", "GET") is None
    rules = [
        policy.grpc_update_rule("TraceSetting"),
        policy.http_rule("/v2/trace/setting", "POST"),
        policy.http_rule("/v2/models/{model}/trace/setting", "POST"),
    ]
    for rule in rules:
        assert rule is not None
        assert rule.denial("127.0.0.1", lambda _: None) is None
        assert rule.denial("10.0.0.1", lambda _: None) is not None
        assert rule.denial("10.0.0.1", {"authorization": f"Bearer {TOKEN}"}.get) is None
    opened = AccessPolicy(allow_remote_management=True)
    assert opened.grpc_update_rule("TraceSetting") is None
    assert opened.http_rule("/v2/trace/setting", "POST") is None
    assert policy.grpc_update_rule("ModelInfer") is None


def test_the_trace_api_can_be_restricted() -> None:
    policy = AccessPolicy.from_settings(
        settings_from_args(build_parser().parse_args(["serve", "--http-restricted-api", "trace:k=v"]))
    )
    read = policy.http_rule("/v2/trace/setting", "GET")
    assert read is not None
    assert read.denial("127.0.0.1", lambda _: None) is not None
    assert read.denial("10.0.0.1", {"k": "v"}.get) is None
    update = policy.http_rule("/v2/trace/setting", "POST")
    assert update is not None
    assert update.denial("127.0.0.1", {"k": "v"}.get) is None
    assert update.denial("127.0.0.1", lambda _: None) is not None
