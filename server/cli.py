"""``clipperd serve --model-repository DIR``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from server import __version__
from server.access import AccessPolicy
from server.applications.state import check_store_spec
from server.grpc.http2.limits import Http2Limits
from server.lifecycle import serve
from server.rest.limits import HttpLimits
from server.settings import Settings, env_default, parse_bool, setting_fields
from server.tls import check_tls_settings


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


def _add_setting(parser: argparse.ArgumentParser, f: object) -> None:
    name: str = f.name  # type: ignore[attr-defined]
    meta = f.metadata  # type: ignore[attr-defined]
    default = env_default(name, f.default)  # type: ignore[attr-defined]
    flag = "--" + name.replace("_", "-")
    kwargs: dict[str, object] = {"help": meta["help"], "default": default}
    if meta.get("multiple"):
        kwargs.update(action="append", default=None)
    elif isinstance(default, bool):
        kwargs.update(action=BoolFlag, help=f"{meta['help']} (--no-{flag[2:]}: off)")
        parser.add_argument(
            "--no-" + flag[2:], dest=name, action="store_false", default=default, help=argparse.SUPPRESS
        )
    else:
        kwargs["type"] = Path if name == "model_repository" else type(default)
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
    parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipperd", description="Low-latency prediction serving (KServe v2).")
    parser.add_argument("--version", action="version", version=f"clipperd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve a model repository")
    for f in setting_fields():
        _add_setting(serve_parser, f)
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ValueError as error:  # a CLIPPERD_* variable that does not parse
        print(f"clipperd: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    try:
        settings.cache_bytes()
        AccessPolicy.from_settings(settings)
        check_tls_settings(settings)
        HttpLimits.from_settings(settings)  # the HTTP limits' values are checked
        Http2Limits.from_settings(settings)
    except ValueError as error:  # TlsError is one
        parser.error(str(error))  # exits 2, as for any other bad flag
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("hpack").setLevel(logging.WARNING)  # at DEBUG it logs every header of every call
    logging.getLogger("py4j").setLevel(logging.WARNING)  # Spark's bridge narrates every connection at INFO
    if not settings.model_repository.is_dir():
        logging.getLogger("clipperd").error("model repository %s is not a folder", settings.model_repository)
        return 2
    try:
        check_store_spec(settings.app_state)
    except ValueError as error:
        logging.getLogger("clipperd").error("%s", error)
        return 2
    if settings.gil_switch_interval_us > 0:
        sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        clean = runner.run(serve(settings))
        if not clean:  # a model is stuck: its thread cannot be joined, leave without waiting for it
            logging.shutdown()
            os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
