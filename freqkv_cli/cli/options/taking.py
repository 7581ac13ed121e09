"""How a command takes option groups: a group's options in its signature, its dataclass as the value."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any


class Options:
    """A group's options as a command takes them: all, or ``only`` some; ``defaults`` changes
    what an option defaults to, or fixes the value of one the command does not offer."""

    def __init__(
        self, group: type, names: tuple[str, ...] | None = None, defaults: dict[str, Any] | None = None
    ) -> None:
        self.group = group
        self.hints = typing.get_type_hints(group, include_extras=True)
        self.fields = {f.name: f for f in fields(group) if f.init}
        self.names = tuple(self.fields) if names is None else names
        self.given = dict(defaults or {})
        unknown = [name for name in (*self.names, *self.given) if name not in self.fields]
        if unknown:
            raise TypeError(f"{group.__name__} has no option {', '.join(unknown)}")

    def only(self, *names: str) -> Options:
        return Options(self.group, names, self.given)

    def without(self, *names: str) -> Options:
        return self.only(*(name for name in self.names if name not in names))

    def defaults(self, **values: Any) -> Options:
        return Options(self.group, self.names, {**self.given, **values})

    def parameters(self) -> list[inspect.Parameter]:
        return [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=self._default(name), annotation=self.hints[name]
            )
            for name in self.names
        ]

    def build(self, values: dict[str, Any]) -> Any:
        """The group's dataclass from the command's arguments (its own are taken out of ``values``)."""
        fixed = {name: value for name, value in self.given.items() if name not in self.names}
        return self.group(**fixed, **{name: values.pop(name) for name in self.names})

    def _default(self, name: str) -> Any:
        if name in self.given:
            return self.given[name]
        default = self.fields[name].default
        return inspect.Parameter.empty if default is MISSING else default


def takes(**groups: Options) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command option groups: each of its parameters named here stands, in the signature
    Typer reads, for the group's options, and receives the group's dataclass built from them.
    A command that only passes its groups on takes them as ``**groups``."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(command, include_extras=True)
        named = inspect.signature(command).parameters
        parameters: list[inspect.Parameter] = []
        for parameter in named.values():
            if parameter.name in groups:
                parameters += groups[parameter.name].parameters()
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:  # **groups: the ones not named
                for name, group in groups.items():
                    parameters += group.parameters() if name not in named else []
            else:
                annotation = hints.get(parameter.name, parameter.annotation)
                parameters.append(
                    parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
                )
        names = [parameter.name for parameter in parameters]
        clashes = {name for name in names if names.count(name) > 1}
        if clashes:
            raise TypeError(f"{command.__name__}: options named twice: {', '.join(sorted(clashes))}")

        @functools.wraps(command)
        def run(**values: Any) -> None:
            built = {name: group.build(values) for name, group in groups.items()}
            command(**values, **built)

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return run

    return decorate
