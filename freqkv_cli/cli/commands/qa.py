"""`freqkv qa PATH|- QUESTION`: answer a question about a document."""

from __future__ import annotations

from typing import Annotated

import typer

from ...errors import UsageError
from .. import options as o
from ..readout import Readout
from ..running import run_document_task


def qa(
    path: Annotated[
        str, typer.Argument(help="A PDF, a text file, or - for standard input.", show_default=False)
    ],
    question: Annotated[str, typer.Argument(help="The question.", show_default=False)],
    model: o.ModelOpt = "default",
    base: o.BaseOpt = None,
    untuned: o.UntunedOpt = False,
    window: o.WindowOpt = None,
    ctx: o.CtxOpt = None,
    sink: o.SinkOpt = None,
    recent: o.RecentOpt = None,
    ratio: o.RatioOpt = None,
    exact: o.ExactOpt = None,
    cache: o.CacheOpt = "hybrid",
    reread: o.RereadOpt = 8,
    device: o.DeviceOpt = "auto",
    dtype: o.DtypeOpt = "auto",
    trust_remote_code: o.TrustOpt = False,
    max_new_tokens: o.MaxNewOpt = 200,
    temperature: o.TemperatureOpt = 0.0,
    top_p: o.TopPOpt = 1.0,
    seed: o.SeedOpt = None,
    repetition_penalty: o.RepetitionOpt = 1.1,
    system: o.SystemOpt = None,
    pages: o.PagesOpt = None,
    password: o.PasswordOpt = None,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    progress: o.ProgressOpt = False,
    no_color: o.NoColorOpt = False,
) -> None:
    """Answer a question about a document.

    The question goes before the document (kept exact through every compression) and
    again after it. With the hybrid cache, the question chooses which passages stay exact,
    and the best of them (--reread) are quoted again just before the question.

    Examples:

      freqkv qa report.pdf "Who signed it?"

      freqkv qa report.pdf "Who signed it?" --json | jq -r .answer

      cat log.txt | freqkv qa - "Which service failed first?"
    """
    if not question.strip():
        raise UsageError("the question is empty")
    run_document_task(
        path=path,
        task="qa",
        question=question.strip(),
        model=o.ModelChoice(model, base, device, dtype, trust_remote_code, untuned),
        cache=o.CacheChoice(cache, window, sink, recent, ratio, ctx, exact),
        sampler=o.make_sampler(temperature, top_p, seed, repetition_penalty),
        max_new_tokens=max_new_tokens,
        system=system,
        password=password,
        pages=pages,
        readout=Readout(quiet=quiet, force_progress=progress, no_color=o.color_disabled(no_color)),
        as_json=as_json,
        reread=reread,
    )
