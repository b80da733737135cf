"""The one-line user error every config check raises, and the checks themselves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a configuration value; its message is one line meant for the user."""


def _fail(name: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{name}={value!r}: expected {expected}")


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        _fail(name, value, expected)


def _choice(name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    _check(value in allowed, name, value, "one of " + ", ".join(allowed))
