"""Checkpoints of a fine-tuning run on disk: ``checkpoint`` (complete), ``checkpoint.tmp`` (the
next, being written, its ``state.json`` last) and ``checkpoint.old`` (the previous one, while the
new one takes its place). At every moment one complete checkpoint exists."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import WRITE_ERRORS, OutputError, write_failure

CHECKPOINT_DIR = "checkpoint"
STAGING_SUFFIX = ".tmp"  # checkpoint.tmp: the next checkpoint, being written
OLD_SUFFIX = ".old"  # checkpoint.old: the previous one, for the moment the new one takes its place
STATE_FILE = "state.json"  # written last: a checkpoint folder that has it is complete
log = logging.getLogger("freqkv_cli")


def save_optimizer(state: dict, path: Path) -> None:
    """``torch.save`` of an optimizer's state (tensors only: resume loads it weights_only). torch's
    writer reports a full disk as a RuntimeError ("enforce fail ... unexpected pos"): an OSError
    here, so that :func:`save` keeps the previous checkpoint and says so in one line."""
    import torch

    try:
        torch.save(state, path)
    except RuntimeError:
        raise OSError(errno.EIO, f"torch could not write {path.name}: is the disk full?") from None


def save(out: Path, write: Callable[[Path], None], state: dict) -> Path:
    """Write a checkpoint of ``state`` (``step`` among it) into ``out``: ``write(folder)`` puts the
    weights in; then ``state.json``, synced, and the renames. OutputError if it cannot."""
    folder = out / CHECKPOINT_DIR
    staging = out / (CHECKPOINT_DIR + STAGING_SUFFIX)
    old = out / (CHECKPOINT_DIR + OLD_SUFFIX)
    try:
        remove_tree(staging)  # the remains of a save that was interrupted
        staging.mkdir(parents=True)
        write(staging)
        sync_files(staging)
        write_synced(staging / STATE_FILE, json.dumps(state) + "\n")
        # Replace the previous checkpoint only once the new one is complete.
        if folder.exists():
            remove_tree(old)  # left by an interrupted save; `folder` is complete, so old is not needed
            folder.rename(old)
            staging.rename(folder)
        else:
            staging.rename(folder)
        remove_tree(old)
    except WRITE_ERRORS as exc:
        remove_tree(staging)
        kept = checkpoint_step(folder) if is_complete(folder) else checkpoint_step(old)
        previous = f"the checkpoint of step {kept} is kept" if kept else "no earlier checkpoint"
        raise OutputError(
            f"cannot write the checkpoint of step {state['step']} in '{out}' ({write_failure(exc)}): "
            f"{previous}; free some space and go on with `resume`"
        ) from None
    return folder


def recover(out: Path) -> Path | None:
    """The complete checkpoint to resume from, put back in place if a save was interrupted
    between its two renames (only ``checkpoint.old`` and ``checkpoint.tmp`` left)."""
    folder = out / CHECKPOINT_DIR
    if is_complete(folder):
        return folder
    staging = out / (CHECKPOINT_DIR + STAGING_SUFFIX)
    old = out / (CHECKPOINT_DIR + OLD_SUFFIX)
    candidates = [path for path in (staging, old) if is_complete(path)]
    if not candidates:
        if any(path.exists() for path in (folder, staging, old)):
            log.warning("no complete checkpoint in '%s' (a save was cut short): starting from step 0", out)
        return None
    newest = max(candidates, key=checkpoint_step)
    if folder.exists():
        remove_tree(folder)
    newest.rename(folder)
    log.warning(
        "'%s': the last save was interrupted; going on from the checkpoint of step %d",
        out,
        checkpoint_step(folder),
    )
    return folder


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def is_complete(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file()


def checkpoint_step(folder: Path) -> int:
    try:
        return int(json.loads((folder / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def sync_files(folder: Path) -> None:
    """Flush ``folder``'s files to the disk: a checkpoint marked complete must be complete."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())


def write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
