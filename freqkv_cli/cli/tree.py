"""The app's commands, and the command tree built for one run.

Only the invoked command's module is imported: it brings torch and transformers, seconds of
imports. Every other command is a stub that carries its help (its docstring, read from its
source without importing it), so `freqkv --help`, `--version` and a mistyped command answer at
once, and list exactly what the full tree (:func:`full_app`) lists.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from .. import __version__

EPILOG = (
    "Exit codes: 0 ok · 1 internal error · 2 usage (or output that cannot be written) · "
    "3 unreadable input · 4 model · 5 out of memory · 130 interrupted. "
    "FREQKV_DEBUG=1 shows tracebacks; FREQKV_THREADS=N sets CPU threads."
)
APP_HELP = (
    "Read, summarize, question and chat with documents far longer than a model's window, "
    "in constant memory (FreqKV: the KV cache is compressed in the frequency domain whenever it fills). "
    "Answers go to stdout; progress and memory readouts to stderr."
)
EVAL_HELP = (
    "Measure what a cache policy costs on your model and text: long-text perplexity (ppl) "
    "and needle-in-a-haystack retrieval (needle), every policy side by side."
)
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
COMMANDS_PACKAGE = "freqkv_cli.cli.commands"


@dataclass(frozen=True)
class CommandSpot:
    """Where a command lives: ``attr`` of ``freqkv_cli.cli.commands.<module>``; ``group`` is
    the group it sits in (``eval``), ``sub_app`` marks a Typer group of its own (``logs``)."""

    name: str
    module: str
    attr: str
    group: str | None = None
    sub_app: bool = False

    @property
    def path(self) -> tuple[str, ...]:
        return (self.group, self.name) if self.group else (self.name,)

    def load(self) -> Any:
        return getattr(importlib.import_module(f"{COMMANDS_PACKAGE}.{self.module}"), self.attr)

    def help_text(self) -> str | None:
        """The command's help as Typer would take it (the function's docstring; a group's
        ``help=``), read from the module's source."""
        return _help_in_source(self.module, self.attr, group=self.sub_app)


# In the order the help lists them (Typer lists commands, then groups).
COMMANDS = (
    CommandSpot("summarize", "summarize", "summarize"),
    CommandSpot("qa", "qa", "qa"),
    CommandSpot("read", "read", "read"),
    CommandSpot("chat", "chat", "chat"),
    CommandSpot("count", "count", "count"),
    CommandSpot("info", "info", "info"),
    CommandSpot("spectrum", "spectrum", "spectrum"),
    CommandSpot("finetune", "finetune", "finetune"),
    CommandSpot("calibrate", "calibrate", "calibrate"),
    CommandSpot("ppl", "eval_ppl", "ppl", group="eval"),
    CommandSpot("needle", "eval_needle", "needle", group="eval"),
    CommandSpot("ruler", "eval_ruler", "ruler", group="eval"),
    CommandSpot("logs", "logs", "logs_app", sub_app=True),
    CommandSpot("models", "models", "models"),
)
# Commands that take no model: `checked_early` has nothing to check for them.
UNCHECKED = ("logs", "models")


def invoked(argv: Sequence[str]) -> tuple[str, ...]:
    """The command path ``argv`` names (``("qa",)``, ``("eval", "ppl")``, ``("eval",)``); ``()``
    when it names none that exists (the root's help, --version, a mistyped name)."""
    words = [word for word in argv if not word.startswith("-")][:2]
    paths = {spot.path for spot in COMMANDS}
    groups = {spot.group for spot in COMMANDS if spot.group}
    if tuple(words) in paths:
        return tuple(words)
    if words and (words[0] in groups or (words[0],) in paths):
        return (words[0],)
    return ()


def build_app(
    argv: Sequence[str] | None, wrap: Callable[[Callable[..., None]], Callable[..., None]]
) -> typer.Typer:
    """The tree for a run of ``argv``: the invoked command real (each model command passed
    through ``wrap``), the others stubs; ``argv`` None: every command real."""
    path = None if argv is None else invoked(argv)
    app = typer.Typer(
        name="freqkv",
        help=APP_HELP,
        epilog=EPILOG,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings=HELP_OPTIONS,
    )
    app.callback()(_main)
    eval_app = typer.Typer(help=EVAL_HELP, no_args_is_help=True, context_settings=HELP_OPTIONS)
    app.add_typer(eval_app, name="eval")  # filled below; groups are listed in the order added

    def real(spot: CommandSpot) -> bool:
        return path is None or spot.path == path[: len(spot.path)]

    for spot in COMMANDS:
        if spot.sub_app:
            group = spot.load() if real(spot) else typer.Typer(help=spot.help_text())
            app.add_typer(group, name=spot.name)
            continue
        if real(spot):
            command = spot.load()
            command = command if spot.name in UNCHECKED else wrap(command)
            kwargs: dict[str, Any] = {"epilog": EPILOG}
        else:
            command = _stub
            kwargs = {"name": spot.name, "help": spot.help_text(), "epilog": EPILOG}
        (eval_app if spot.group == "eval" else app).command(**kwargs)(command)
    return app


def full_app(
    wrap: Callable[[Callable[..., None]], Callable[..., None]] = lambda command: command,
) -> typer.Typer:
    """Every command real (tests walk it; the help of stubs is checked against it)."""
    return build_app(None, wrap)


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"freqkv {__version__}\n")
        raise typer.Exit(0)


def _main(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """The options before a command (the app's help is the Typer's own)."""


def _stub() -> None:
    """Never run: a stub stands only in a tree built for another command."""


@functools.cache
def _help_in_source(module: str, attr: str, *, group: bool) -> str | None:
    spec = importlib.util.find_spec(f"{COMMANDS_PACKAGE}.{module}")
    if spec is None or spec.origin is None:
        raise LookupError(f"no command module {module}")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in tree.body:
        if not group and isinstance(node, ast.FunctionDef) and node.name == attr:
            return ast.get_docstring(node)
        if (
            group
            and isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == attr for target in node.targets)
        ):
            call = node.value
            if isinstance(call, ast.Call):
                for keyword in call.keywords:
                    if keyword.arg == "help":
                        return ast.literal_eval(keyword.value)
    raise LookupError(f"no help for {attr} in {spec.origin}")
