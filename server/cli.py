"""``clipperd serve --model-repository DIR``: the command line; ``clipperd health``: the
container's health check (``server/probe.py``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from server import __version__, probe
from server.access import AccessPolicy
from server.applications.state import check_store_spec
from server.grpc.http2.limits import Http2Limits
from server.log_setup import configure_logging
from server.rest.limits import HttpLimits
from server.settings import Settings, convert, env_default, parse_bool, setting_fields
from server.storage.location import parse_bucket_url
from server.tls import check_tls_settings
from server.tracing.tracer import check_trace_config
from server.triton_flags import WARNINGS, add_triton_flags, backend_config_warnings


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): what a launch log shows is the
    reason, as tritonserver prints it. Exit code 2, as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class BoolFlag(argparse.Action):
    """``--x``, and Triton's ``--x=true|false`` (also ``--x false``, 1/0, yes/no, on/off); ``--no-x``
    is added beside it."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs="?", metavar="true|false", **kwargs)  # type: ignore[arg-type]

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        try:
            setattr(namespace, self.dest, True if values is None else parse_bool(str(values)))
        except ValueError as error:
            parser.error(f"{option_string}: {error}")


class OneRepository(argparse.Action):
    """``--model-repository``/``--model-store``: Triton takes several; clipperd serves one, and a
    second would leave its models unserved, so it is refused rather than ignored."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, "_repository_given", False):
            parser.error(f"{option_string}: given twice; clipperd serves one model repository")
        namespace._repository_given = True
        setattr(namespace, self.dest, values)


def _flag_type(name: str, default: object, meta: Any) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return convert(name, default, meta, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _add_setting(parser: argparse.ArgumentParser, f: Any) -> None:
    name: str = f.name
    meta = f.metadata
    default = env_default(name, f.default)
    flags = ["--" + name.replace("_", "-"), *meta.get("aliases", ())]
    kwargs: dict[str, Any] = {"help": meta["help"], "default": default, "dest": name}
    if meta.get("multiple"):
        kwargs.update(action="append", default=None)
    elif isinstance(default, bool):
        kwargs.update(action=BoolFlag, help=f"{meta['help']} (--no-{flags[0][2:]}: off)")
        parser.add_argument(
            "--no-" + flags[0][2:], dest=name, action="store_false", default=default, help=argparse.SUPPRESS
        )
    else:
        kwargs["type"] = _flag_type(name, f.default, meta)
        if name == "model_repository":
            kwargs["action"] = OneRepository
    parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """``clipperd serve`` (also ``clipperd tritonserver``, as KServe's Triton runtime runs it).
    ValueError when a ``CLIPPERD_*`` variable does not parse."""
    parser = Parser(prog="clipperd", description="Low-latency prediction serving (KServe v2).", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"clipperd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", aliases=["tritonserver"], help="serve a model repository", allow_abbrev=False
    )
    for f in setting_fields():
        _add_setting(serve_parser, f)
    add_triton_flags(serve_parser)
    health_parser = commands.add_parser(
        "health", help="exit 0 if the server on this machine is ready (the image's HEALTHCHECK)", allow_abbrev=False
    )
    probe.add_arguments(health_parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in setting_fields()}
    for f in setting_fields():
        if f.metadata.get("multiple") and values[f.name] is None:
            values[f.name] = env_default(f.name, None) or []
    return Settings(**values)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # the standard loop works, only slower
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _checked(settings: Settings) -> list[str]:
    """ValueError for the first value that cannot work; the warnings to log otherwise."""
    settings.cache_bytes()
    check_trace_config(list(settings.trace_config))
    settings.rate_limits()
    AccessPolicy.from_settings(settings)
    check_tls_settings(settings)
    HttpLimits.from_settings(settings)  # the HTTP limits' values are checked
    Http2Limits.from_settings(settings)
    check_store_spec(settings.app_state)
    where = "--model-repository (or CLIPPERD_MODEL_REPOSITORY)"
    if isinstance(settings.model_repository, str):  # a URL: a bucket
        try:
            parse_bucket_url(settings.model_repository)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    elif not settings.model_repository.is_dir():
        raise ValueError(f"{where}: {str(settings.model_repository)[:256]} is not a folder")
    return backend_config_warnings(settings.backend_config)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["health"]:  # before the serve flags: its own exit codes, whatever CLIPPERD_* holds
        return probe.main(argv[1:])
    try:
        parser = build_parser()
    except ValueError as error:  # a CLIPPERD_* variable that does not parse
        print(f"clipperd: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    try:
        warnings = _checked(settings)
    except ValueError as error:  # TlsError is one
        parser.error(str(error))  # exits 2, as for any other bad flag
    configure_logging(settings)
    from_env = ", ".join(sorted(name for name in os.environ if name.startswith("CLIPPERD_")))
    log = logging.getLogger("clipperd")
    log.debug("settings from the environment: %s", from_env or "none")  # names only: values may be secrets
    for warning in [*(getattr(args, WARNINGS, None) or []), *warnings]:
        log.warning("%s", warning)
    if settings.gil_switch_interval_us > 0:
        sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
    # imported here, not at the top: the server's modules take a second to import, which
    # `clipperd health`, run every few seconds by the container, does not need
    from server.lifecycle import serve

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        clean = runner.run(serve(settings))
        if not clean:  # a model is stuck: its thread cannot be joined, leave without waiting for it
            logging.shutdown()
            os._exit(1)
    return 0


def tritonserver_main() -> int:
    """The ``tritonserver`` console script: ``clipperd serve`` under Triton's name, so a launch line
    written for Triton (KServe's runtime) runs unchanged."""
    return main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
