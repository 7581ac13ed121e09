"""`freqkv models`: what is available to run, with sizes (no weights are read)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ...catalog import available
from ...models.default import freqkv_home
from ...sizes import format_bytes
from .. import options as o
from ..output import show_table, tables_console


def models(
    folders: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Other folders to look in as well (models, adapters, .fkv memories).",
            show_default=False,
            metavar="FOLDER",
        ),
    ] = None,
    as_json: o.JsonOpt = False,
    no_color: o.NoColorOpt = False,
) -> None:
    """List the default model, converted models, adapters, saved memories (.fkv) and head
    profiles under FREQKV_HOME, with their sizes on disk.

    NAME is what --model takes (a memory is what qa, summarize and chat take as a document).

    Examples:

      freqkv models

      freqkv models ~/checkpoints . --json | jq -r '.[] | select(.kind == "memory") | .path'
    """
    entries = available(folders or [])
    if as_json:
        sys.stdout.write(json.dumps([e.as_json() for e in entries], ensure_ascii=False) + "\n")
        return
    grid = Table()
    for column in ("kind", "name", "size", "about"):
        grid.add_column(column, justify="right" if column == "size" else "left", no_wrap=column != "about")
    for entry in entries:
        grid.add_row(entry.kind, entry.name, format_bytes(entry.bytes) if entry.bytes else "-", entry.note)
    show_table(tables_console(no_color), f"available under {freqkv_home()}", grid)
