"""Logging as the command line asks: clipperd's ``--log-level`` threshold and Triton's
``--log-verbose``/``--log-info``/``--log-warning``/``--log-error``, which turn each level on or
off by itself (``--log-info=false`` keeps warnings and errors)."""

from __future__ import annotations

import logging
import sys

from server.settings import Settings

_QUIET = {"hpack": logging.WARNING, "py4j": logging.WARNING}  # they narrate every header / connection


class LevelSwitch(logging.Filter):
    """Drops the records of the levels Triton's flags turned off."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.off = {
            level
            for level, on in (
                (logging.INFO, settings.log_info),
                (logging.WARNING, settings.log_warning),
                (logging.ERROR, settings.log_error),
            )
            if not on
        }

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno not in self.off


def configure_logging(settings: Settings) -> None:
    level = logging.DEBUG if settings.log_verbose > 0 else getattr(logging, settings.log_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(LevelSwitch(settings))
    logging.basicConfig(level=level, handlers=[handler])
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(quiet)
