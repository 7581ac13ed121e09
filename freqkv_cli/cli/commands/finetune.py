"""`freqkv finetune`: teach a model to read FreqKV-compressed caches (LoRA + norms)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ...cache.policy import CachePolicy
from ...errors import UsageError
from ...sizes import format_count, parse_size
from .. import options as o
from ..readout import Readout
from ..running import StopFlag

TRAIN_PANEL = "Training"


def finetune(
    data: Annotated[
        list[str],
        typer.Option(
            "--data",
            "-d",
            help="Training text: a .txt/.pdf/.txt.xz file or a folder of them (repeatable).",
            rich_help_panel=o.INPUT_PANEL,
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output adapter folder.", show_default=False)],
    model: o.ModelOpt = "default",
    window: Annotated[
        str, typer.Option("--window", "-w", rich_help_panel=o.MODEL_PANEL, help="Window N.")
    ] = "1024",
    sink: Annotated[int, typer.Option("--sink", rich_help_panel=o.MODEL_PANEL, help="Sink tokens S.")] = 4,
    recent: Annotated[
        int, typer.Option("--recent", rich_help_panel=o.MODEL_PANEL, help="Recent tokens R.")
    ] = 0,
    ratio: Annotated[
        float, typer.Option("--ratio", rich_help_panel=o.MODEL_PANEL, help="Kept share r.")
    ] = 0.5,
    exact: o.ExactOpt = None,
    cache: Annotated[
        str,
        typer.Option(
            "--cache",
            rich_help_panel=o.MODEL_PANEL,
            help="Policy in the loop: freqkv, sink, or hybrid (random spans kept exact; see --exact).",
        ),
    ] = "freqkv",
    seq_len: Annotated[
        str, typer.Option("--seq-len", rich_help_panel=TRAIN_PANEL, help="Tokens per training sequence.")
    ] = "8k",
    steps: Annotated[
        int, typer.Option("--steps", rich_help_panel=TRAIN_PANEL, help="Optimizer steps.")
    ] = 200,
    lr: Annotated[
        float, typer.Option("--lr", rich_help_panel=TRAIN_PANEL, help="Peak learning rate.")
    ] = 3e-4,
    warmup: Annotated[int, typer.Option("--warmup", rich_help_panel=TRAIN_PANEL, help="Warm-up steps.")] = 10,
    batch: Annotated[
        int, typer.Option("--batch", rich_help_panel=TRAIN_PANEL, help="Sequences per optimizer step.")
    ] = 8,
    micro_batch: Annotated[
        int, typer.Option("--micro-batch", rich_help_panel=TRAIN_PANEL, help="Sequences per forward [batch].")
    ] = 0,
    lora_r: Annotated[int, typer.Option("--lora-r", rich_help_panel=TRAIN_PANEL, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[
        int, typer.Option("--lora-alpha", rich_help_panel=TRAIN_PANEL, help="LoRA alpha.")
    ] = 32,
    lora_dropout: Annotated[
        float, typer.Option("--lora-dropout", rich_help_panel=TRAIN_PANEL, help="LoRA dropout.")
    ] = 0.0,
    lora_targets: Annotated[
        str,
        typer.Option(
            "--lora-targets", rich_help_panel=TRAIN_PANEL, help="Modules given LoRA, comma-separated."
        ),
    ] = "q_proj,k_proj,v_proj,o_proj",
    train_norms: Annotated[
        bool,
        typer.Option("--train-norms/--freeze-norms", rich_help_panel=TRAIN_PANEL, help="Train the norms."),
    ] = True,
    train_embeddings: Annotated[
        bool,
        typer.Option("--train-embeddings", rich_help_panel=TRAIN_PANEL, help="Train the embeddings too."),
    ] = False,
    checkpointing: Annotated[
        bool,
        typer.Option(
            "--grad-checkpointing/--no-grad-checkpointing",
            rich_help_panel=TRAIN_PANEL,
            help="Recompute layers in backward (less memory, ~25% slower).",
        ),
    ] = True,
    distill: Annotated[
        float,
        typer.Option(
            "--distill",
            rich_help_panel=TRAIN_PANEL,
            help="Weight (0-1) of distillation from the base model with a full cache (KL to its "
            "next-token distribution) against plain next-token loss: keeps the base model's behaviour, "
            "e.g. following instructions, while it learns to read compressed caches.",
        ),
    ] = 0.0,
    seed: Annotated[
        int, typer.Option("--seed", rich_help_panel=TRAIN_PANEL, help="Seed (init and data).")
    ] = 0,
    save_every: Annotated[
        int, typer.Option("--save-every", rich_help_panel=TRAIN_PANEL, help="Checkpoint every N steps.")
    ] = 50,
    resume: Annotated[
        bool, typer.Option("--resume", rich_help_panel=TRAIN_PANEL, help="Go on from OUT/checkpoint.")
    ] = False,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            "--max-minutes",
            rich_help_panel=TRAIN_PANEL,
            help="Stop after this long and write the adapter as it is (the schedule still assumes --steps).",
        ),
    ] = None,
    device: o.DeviceOpt = "auto",
    trust_remote_code: o.TrustOpt = False,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    progress: o.ProgressOpt = False,
    no_color: o.NoColorOpt = False,
) -> None:
    """Fine-tune with FreqKV compression in the loop; writes a LoRA adapter that --model loads.

    Every training sequence runs through exactly the window schedule used at inference
    (fill to N, compress, F - L new tokens, ...), and gradients flow through the DCT.
    The output folder holds the adapter, trainable_params.safetensors (norms) and freqkv.json
    (the policy and a fingerprint of the base weights); `--model OUT` uses it.

    Examples:

      freqkv finetune --data books/ --window 1k --seq-len 8k --steps 300 --out my-adapter

      freqkv summarize report.pdf --model my-adapter
    """
    from ...models.loading import load_model
    from ...training.corpus import TokenCorpus
    from ...training.finetune import FinetuneConfig, Finetuner

    readout = Readout(quiet=quiet, force_progress=progress, no_color=o.color_disabled(no_color))
    policy = CachePolicy(
        kind=cache, window=parse_size(window), sink=sink, recent=recent, ratio=ratio, exact=exact or 0.25
    )
    config = FinetuneConfig(
        policy=policy, seq_len=parse_size(seq_len), steps=steps, lr=lr, warmup=warmup, batch=batch,
        micro_batch=micro_batch, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
        train_norms=train_norms, train_embeddings=train_embeddings, gradient_checkpointing=checkpointing,
        distill=distill, seed=seed, save_every=save_every,
    )  # fmt: skip
    config.validate()
    if max_minutes is not None and max_minutes <= 0:
        raise UsageError("--max-minutes must be positive")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UsageError(f"--out '{out}' is not empty: pass --resume to go on, or choose a new folder")
    if model != "default" and Path(model, "adapter_config.json").expanduser().is_file():
        raise UsageError("--model is an adapter: fine-tune its base model instead")
    with readout.status(f"loading model {model} ..."):
        loaded = load_model(
            model, device=device, dtype="float32", trust_remote_code=trust_remote_code, untuned=True
        )
    with readout.status("reading training data ..."):
        corpus = TokenCorpus.from_files(
            data, loaded.tokenizer, getattr(loaded.tokenizer, "eos_token_id", None)
        )
    trainer = Finetuner(loaded, model, config, corpus, out)
    trainable, total = trainer.trainable_counts()
    readout.info(
        f"{loaded.name} on {loaded.device}: training {format_count(trainable)} of {format_count(total)} "
        f"parameters on {format_count(len(corpus))} tokens from {len(corpus.sources)} files; "
        f"{policy.kind} window {policy.window}, sink {policy.sink}, recent {policy.recent}, "
        f"ratio {policy.ratio}"
    )
    stop = StopFlag()
    deadline = None if max_minutes is None else time.monotonic() + max_minutes * 60
    bar = Progress(
        TextColumn("[bold]training[/]"),
        BarColumn(bar_width=24),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]}"),
        TimeRemainingColumn(),
        console=readout.console,
        disable=not readout.show_progress,
    )
    task = bar.add_task("train", total=steps, loss="-", speed="")

    def on_step(report: object) -> None:
        bar.update(
            task, completed=report.step, loss=f"{report.loss:.4f}",  # type: ignore[attr-defined]
            speed=f"{report.tokens_per_second:,.0f} tok/s",  # type: ignore[attr-defined]
        )  # fmt: skip
        if not readout.show_progress and not quiet and (report.step % 10 == 0 or report.step == steps):  # type: ignore[attr-defined]
            readout.info(
                f"step {report.step}/{steps} loss {report.loss:.4f} "  # type: ignore[attr-defined]
                f"{report.tokens_per_second:,.0f} tok/s {report.elapsed:.0f}s"  # type: ignore[attr-defined]
            )

    def should_stop() -> bool:
        return stop() or (deadline is not None and time.monotonic() > deadline)

    with stop.armed(), bar:
        result = trainer.run(resume=resume, on_step=on_step, should_stop=should_stop)
    finished = result.steps == steps
    if not finished and (deadline is not None and time.monotonic() > deadline) and not stop():
        trainer.save_final(corpus.sources, result.seconds)  # time budget: the adapter as it stands
        finished = True
    data_out = {
        "out": str(out),
        "steps": result.steps,
        "planned_steps": steps,
        "resumed_from": result.resumed_from,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 1),
        "final_loss": round(result.losses[-1], 4) if result.losses else None,
        "complete": finished,
    }
    if as_json:
        sys.stdout.write(json.dumps(data_out) + "\n")
    elif finished:
        sys.stdout.write(f"adapter written to {out} ({result.steps} steps, loss {data_out['final_loss']})\n")
    else:
        sys.stdout.write(
            f"stopped at step {result.steps}: checkpoint in {out}/checkpoint; --resume goes on\n"
        )
    if stop():
        raise typer.Exit(130)
