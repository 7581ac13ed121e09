"""`freqkv calibrate`: find a model's retrieval heads for the hybrid cache, and keep them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ...documents import open_document
from ...errors import InputError, UsageError
from ...evaluation.calibrate import FACTS, CalibrationTrial, calibrate_heads
from ...models.loading import calibrated_heads_path
from .. import options as o
from ..output import write_json


@o.takes(model=o.MODEL, output=o.OUTPUT.without("progress"))
def calibrate(
    *,
    text: Annotated[
        str | None,
        typer.Option(
            "--text",
            rich_help_panel=o.INPUT_PANEL,
            metavar="PATH",
            show_default="the shipped Botchan excerpt",
            help="Text to hide the facts in (a book; not the text you will test on).",
        ),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", min=1, max=1000, help="Hidden-fact trials.")] = 24,
    heads: Annotated[int, typer.Option("--heads", min=1, max=256, help="Retrieval heads to keep.")] = 8,
    length: Annotated[int, typer.Option("--length", min=64, max=65536, help="Tokens per trial.")] = 1024,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            show_default="kept for this model under FREQKV_HOME",
            help="Where to write the profile.",
        ),
    ] = None,
    model: o.ModelChoice,
    output: o.OutputChoice,
) -> None:
    """Find the model's retrieval heads: the attention heads the hybrid cache asks which tokens
    a question needs kept exact.

    Each trial hides a made-up fact (a name, a place, a number...) in the text, reads it with a
    question about it, and ranks the document's tokens by every head's attention from the
    question. The heads that rank the fact highest over all trials are kept for this model;
    later qa and chat sessions with --cache hybrid use them. Without a profile every head counts.

    Examples:

      freqkv calibrate --model ./my-model --text book.txt

      freqkv calibrate --untuned --trials 48 --json
    """
    readout = output.readout
    source = text or "the shipped Botchan excerpt"
    if text is not None:
        haystack = open_document(text).text()
    else:
        from ...evaluation.needle import default_haystack

        haystack = default_haystack()
    if not haystack.strip():
        raise InputError(f"{source}: no text to hide facts in")
    loaded = model.load(readout)
    target = out if out is not None else calibrated_heads_path(loaded.heads_key)
    try:  # fail before the trials, not after them
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = target.with_suffix(".probe")
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write the head profile to {target}: {exc.strerror or exc}") from None
    done = {"count": 0}

    def progress(trial: CalibrationTrial) -> None:
        done["count"] += 1
        best = int(trial.ranks.min())
        readout.info(
            f"trial {done['count']}/{trials}: fact {trial.fact + 1}/{len(FACTS)}, best head rank {best}"
        )

    profile = calibrate_heads(loaded, haystack, length=length, trials=trials, top=heads, on_trial=progress)
    profile.source["text"] = source
    profile.save(target)
    scores = [profile.scores[layer][head] for layer, head in profile.heads]
    if output.as_json:
        write_json({"model": loaded.name, "profile": str(target), "heads": profile.heads, "scores": scores})
        return
    sys.stdout.write(
        f"retrieval heads of {loaded.name} (layer, head: mean log(1 + rank), 0 = always first)\n"
    )
    for (layer, head), score in zip(profile.heads, scores, strict=True):
        sys.stdout.write(f"  layer {layer:3d} head {head:3d}: {score:.3f}\n")
    sys.stdout.write(f"saved to {target}\n")
