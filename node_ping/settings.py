"""How a setting is declared once: its flag, env var, default, limits and help.

Every command builds its click options from these declarations, the frozen settings dataclasses
check their values with them, and the README's and the chart's tables are checked against them.
A bad setting always ends the same way: a SettingsError (or click's own error for a value it could
not convert) becomes a usage error, exit 2, one line that names the flag and the env var.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_USAGE = 2
"""What every command exits with on a bad setting (click's usage-error code)."""


class SettingsError(Exception):
    """A setting that cannot work; the message names the flag or env var and the fix."""


def env(name: str, default: str | None = None) -> str | None:
    """An env var's value; unset and empty both mean `default` (Kubernetes renders unset values as "")."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


class Parsed(click.ParamType[T]):
    """A value made by a parse function of the setting's own; its ValueError (or SettingsError) is the
    message click shows."""

    def __init__(self, name: str, parse: Callable[[str], T], parsed: type[Any] | None = None) -> None:
        self.name = name
        self._parse = parse
        self._parsed = parsed  # a value already of this type (a default, or a check of a set value) passes

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if self._parsed is not None and isinstance(value, self._parsed):
            return value  # type: ignore[no-any-return]
        try:
            return self._parse(str(value))
        except (ValueError, SettingsError) as err:
            self.fail(str(err), param, ctx)


class PositiveNumber(click.ParamType[float]):
    """A finite number above 0 and at most `limit`; `noun` says what it counts in messages."""

    name = "number"

    def __init__(self, limit: float = math.inf, noun: str = "number") -> None:
        self.limit = limit
        self.noun = noun

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        text = str(value)
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{text!r} is not a {self.noun}", param, ctx)
        if not math.isfinite(number):  # NaN compares false with everything: a limit it could never fail
            self.fail(f"{text!r} is not a finite {self.noun}", param, ctx)
        if not number > 0:
            self.fail(f"{text!r} must be above 0", param, ctx)
        if number > self.limit:
            self.fail(f"{text!r} must be at most {self.limit:g}", param, ctx)
        return number


@dataclass(frozen=True)
class Setting:
    """One setting of one command. `type` is a click type; its limits (an IntRange, a Choice) are
    the setting's limits, for the command line and for `check` alike."""

    flag: str
    help: str
    env: str | None = None
    default: Any = None
    type: Any = None
    required: bool = False
    metavar: str | None = None
    short: str | None = None  # e.g. "-v"
    is_flag: bool = False
    multiple: bool = False
    show_default: bool = True

    @property
    def name(self) -> str:
        """The Python name click gives the value: --period-ms -> period_ms."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def hint(self) -> str:
        """How messages name the setting, exactly as click's own errors do."""
        return f"'{self.flag}'" + (f" (env var: '{self.env}')" if self.env else "")

    def option(self) -> Callable[[F], F]:
        """The click option for this setting."""
        decls = [self.short, self.flag] if self.short else [self.flag]
        extra: dict[str, Any] = {}
        if self.default is not None:  # an explicit None would count as given: `required` would never fire
            extra["default"] = self.default
        if self.is_flag:
            extra["is_flag"] = True
        else:
            extra["type"] = self.type
            extra["metavar"] = self.metavar
        return click.option(
            *decls, self.name, envvar=self.env, show_envvar=bool(self.env),
            required=self.required, multiple=self.multiple, help=self.help,
            show_default=self.show_default and self.default not in (None, (), False), **extra)

    def check(self, value: Any) -> Any:
        """`value` converted and checked by the setting's type; SettingsError naming it if refused."""
        if self.type is None or not isinstance(self.type, click.ParamType):
            return value
        try:
            return self.type.convert(value, None, None)
        except click.BadParameter as err:
            raise SettingsError(f"Invalid value for {self.hint}: {err.message}") from None


def options(*settings: Setting) -> Callable[[F], F]:
    """Decorate a command with the options of `settings`, in the order given."""

    def decorate(function: F) -> F:
        for setting in reversed(settings):
            function = setting.option()(function)
        return function

    return decorate


class Command(click.Command):
    """A click command whose SettingsError is a usage error: exit 2 with the command's usage."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingsError as err:
            raise click.UsageError(str(err), ctx) from None
