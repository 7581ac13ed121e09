"""Library messages in the CLI's words: the library names parameters in backticks (`seq_len`);
a CLI user knows them as flags (--seq-len)."""

from __future__ import annotations

import functools
import re
from typing import Any

_FLAG_ALIASES = {
    "target_modules": "--lora-targets",
    "kind": "--cache",
    "selector": "--select",
    "ctx": "--ctx",
    "gradient_checkpointing": "--grad-checkpointing",
    "max_new_tokens": "--max-new-tokens",
}
_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")
_run_flags: frozenset[str] | None = None  # the long options of the tree the current run built


def use_flags_of(root: Any) -> None:
    """Until :func:`end_run`, write parameter names as the flags of ``root`` (this run's tree)."""
    global _run_flags
    _run_flags = long_options(root)


def end_run() -> None:
    global _run_flags
    _run_flags = None


def long_options(root: Any) -> frozenset[str]:
    """Every long option of ``root`` and of the commands under it."""
    found: set[str] = set()
    stack = [root]
    while stack:
        command = stack.pop()
        stack.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            found.update(opt for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--"))
    return frozenset(found)


def as_flags(message: str) -> str:
    """``message`` with each backticked parameter name that is a flag written as the flag:
    "`seq_len` 40 must exceed `window`" -> "--seq-len 40 must exceed --window". Outside a run,
    the flags of every command."""

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        candidate = _FLAG_ALIASES.get(name, "--" + name.replace("_", "-"))
        return candidate if candidate in _flags() else match.group(0)

    return _PARAMETER.sub(flag, message)


def _flags() -> frozenset[str]:
    return _run_flags if _run_flags is not None else _every_flag()


@functools.cache
def _every_flag() -> frozenset[str]:
    import typer

    from .tree import full_app

    return long_options(typer.main.get_command(full_app()))
