"""How every command's help reads, applied once to the built command tree.

Typer (0.29) writes ``{path}`` for a required argument, ``<str>``/``<bool>`` after options, keeps
a docstring's line breaks (so a paragraph wraps at 80 columns and again at the terminal's edge)
and reads ``[...]`` in help text as rich markup. Here: metavars such as ``PATH`` and ``N``, none
on flags; paragraphs joined so the terminal wraps them; the examples as one indented block; one
default format, ``[default: X]``, for defaults given as text (``show_default="from the model"``).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Any

from rich.markup import escape

EXAMPLES = "Examples:"
EXAMPLE_INDENT = "  "
_METAVAR_BY_TYPE = {"int": "N", "float": "NUMBER"}


def polish_help(root: Any) -> Any:
    """Apply this module's help conventions to ``root`` (a click command or group) and every
    command under it; returns ``root``."""
    for command in _walk(root):
        command.help = format_help_text(command.help)
        for param in command.params:
            _polish_param(param)
        _override_methods(command)
    return root


def format_help_text(text: str | None) -> str | None:
    """A docstring as help: prose paragraphs on one line each (the terminal wraps them), the
    paragraphs after "Examples:" one block of indented lines, rich markup characters escaped."""
    if not text:
        return text
    text = inspect.cleandoc(text).partition("\f")[0]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    out: list[str] = []
    examples: list[str] | None = None
    for paragraph in paragraphs:
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if examples is not None:
            examples.extend(lines)
        elif lines[0] == EXAMPLES:
            examples = lines[1:]
        elif all(line.startswith(" ") for line in paragraph.splitlines() if line.strip()):
            out.append("\n".join(EXAMPLE_INDENT + escape(line) for line in lines))  # a listing
        else:
            out.append(escape(" ".join(lines)))
    if examples:
        out.append(EXAMPLES + "\n" + "\n".join(EXAMPLE_INDENT + escape(line) for line in examples))
    return "\n\n".join(out)


def metavar_for(param: Any) -> str:
    """``PATH`` for an argument named path, ``N`` for a count, ``MODEL`` for --model, none on a flag."""
    if param.param_type_name == "argument":
        return param.name.upper()
    if getattr(param, "is_flag", False):
        return ""
    described = getattr(param, "type_descriptor", None)
    if described is not None and described.is_choice and described.choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in described.choices)
    by_type = _METAVAR_BY_TYPE.get(param.bare_type() if hasattr(param, "bare_type") else "")
    if by_type is not None:
        return by_type
    longest = max(param.opts, key=len)
    return longest.lstrip("-").replace("-", "_").upper()


def _polish_param(param: Any) -> None:
    if param.metavar is None:
        param.metavar = metavar_for(param)
    if param.param_type_name == "argument":  # its name column says it all: no "<str>" beside it
        param.display_type_rich = types.MethodType(lambda self, ctx: None, param)
    if getattr(param, "help", None):
        param.help = escape(param.help)
    shown = getattr(param, "show_default", None)
    unset = param.default is None and not param.required and not getattr(param, "is_flag", False)
    if param.param_type_name == "option" and unset and shown is not False and not isinstance(shown, str):
        shown = "none"  # not given, not used: said, so that every option shows its default
    if isinstance(shown, str):  # typer would write "[default: (text)]"
        param.help = f"{param.help or ''} \\[default: {escape(shown)}]".strip()
        param.show_default = False


def _override_methods(command: Any) -> None:
    """The help option (made when first asked for) loses its ``<bool>``; the usage line names
    arguments as their metavars, ``PATH`` and ``[PATH]``, not ``{path}``. Set on the instance:
    click asks these public methods of the command, whatever its class."""
    get_params = command.get_params

    def params_without_flag_types(self: Any, ctx: Any) -> list[Any]:
        params = get_params(ctx)
        for param in params:
            if param.metavar is None:
                param.metavar = metavar_for(param)
        return params

    def usage_pieces(self: Any, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = param.metavar or param.name.upper()
            if param.nargs != 1 and "..." not in name:
                name += "..."
            pieces.append(name if param.required else f"[{name}]")
        if hasattr(self, "commands"):  # a group: its commands follow
            pieces.append(self.subcommand_metavar)
        return pieces

    command.get_params = types.MethodType(params_without_flag_types, command)
    command.collect_usage_pieces = types.MethodType(usage_pieces, command)


def _walk(command: Any) -> Iterator[Any]:
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _walk(sub)
