"""Exceptions turned into the one line a client is shown."""

from __future__ import annotations

from pathlib import Path

MAX_TEXT = 400


def exception_text(exc: BaseException, hide: Path | None = None, with_type: bool = False) -> str:
    """The first non-empty line of ``exc`` (frameworks state the problem first and put their
    stack after it), ``hide`` (a model file's path) shown by its name only, at most 400
    characters; ``with_type`` prefixes the exception's class name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if hide is not None:
        text = text.replace(str(hide), hide.name)
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:MAX_TEXT]
