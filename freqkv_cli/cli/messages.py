"""Library messages in the CLI's words: the library names parameters in backticks (`seq_len`);
a CLI user knows them as flags (--seq-len)."""

from __future__ import annotations

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
_known: frozenset[str] | None = None  # the long options of the tree this run built


def use_flags_of(root: Any) -> None:
    """Write parameter names as the flags of ``root`` (the click tree of this run) from now on."""
    global _known
    _known = long_options(root)


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
    global _known
    if _known is None:
        import typer

        from .tree import full_app

        _known = long_options(typer.main.get_command(full_app()))
    return _known
