"""`freqkv finetune`: teach a model to read FreqKV-compressed caches (LoRA + norms)."""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ...cache.policy import CacheSettings
from ...errors import UsageError
from ...models.loaded import LoadedModel
from ...models.quantize import parse_quantize
from ...sizes import format_count, parse_size
from .. import options as o
from ..output import Readout, write_json
from ..running import StopFlag

TRAIN_PANEL = "Training"
train = functools.partial(o.option, panel=TRAIN_PANEL)


@o.takes(
    model=o.MODEL.only("model", "device", "trust_remote_code", "quantize").defaults(
        dtype="float32", untuned=True
    ),
    output=o.OUTPUT,
)
def finetune(
    *,
    data: Annotated[
        list[str],
        o.option(
            "--data",
            "-d",
            panel=o.INPUT_PANEL,
            help="Training text: a .txt/.pdf/.txt.xz file or a folder of them (repeatable).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output adapter folder.", show_default=False)],
    model: o.ModelChoice,
    window: Annotated[str, o.option("--window", "-w", help="Window N.")] = "1024",
    sink: Annotated[int, o.option("--sink", help="Sink tokens S.")] = 4,
    recent: Annotated[int, o.option("--recent", help="Recent tokens R.")] = 0,
    ratio: Annotated[float, o.option("--ratio", help="Kept share r.")] = 0.5,
    exact: o.ExactOpt = None,
    cache: Annotated[
        str,
        o.option(
            "--cache",
            help="Policy in the loop: freqkv, sink, or hybrid (random spans kept exact; see --exact).",
        ),
    ] = "freqkv",
    seq_len: Annotated[str, train("--seq-len", help="Tokens per training sequence.")] = "8k",
    steps: Annotated[int, train("--steps", help="Optimizer steps.")] = 200,
    lr: Annotated[float, train("--lr", help="Peak learning rate.")] = 3e-4,
    warmup: Annotated[int, train("--warmup", help="Warm-up steps.")] = 10,
    batch: Annotated[int, train("--batch", help="Sequences per optimizer step.")] = 8,
    micro_batch: Annotated[
        int, train("--micro-batch", show_default="--batch", help="Sequences per forward.")
    ] = 0,
    lora_r: Annotated[int, train("--lora-r", help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, train("--lora-alpha", help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, train("--lora-dropout", help="LoRA dropout.")] = 0.0,
    lora_targets: Annotated[str, train("--lora-targets", help="Modules given LoRA, comma-separated.")] = (
        "q_proj,k_proj,v_proj,o_proj"
    ),
    train_norms: Annotated[bool, train("--train-norms/--freeze-norms", help="Train the norms.")] = True,
    train_embeddings: Annotated[bool, train("--train-embeddings", help="Train the embeddings too.")] = False,
    checkpointing: Annotated[
        bool,
        train(
            "--grad-checkpointing/--no-grad-checkpointing",
            help="Recompute layers in backward (less memory, ~25% slower).",
        ),
    ] = True,
    distill: Annotated[
        float,
        train(
            "--distill",
            help="Weight (0-1) of distillation from the base model with a full cache (KL to its "
            "next-token distribution) against plain next-token loss: keeps the base model's behaviour, "
            "e.g. following instructions, while it learns to read compressed caches.",
        ),
    ] = 0.0,
    seed: Annotated[int, train("--seed", help="Seed (init and data).")] = 0,
    save_every: Annotated[int, train("--save-every", help="Checkpoint every N steps.")] = 50,
    resume: Annotated[bool, train("--resume", help="Go on from OUT/checkpoint.")] = False,
    max_minutes: Annotated[
        float | None,
        train(
            "--max-minutes",
            help="Stop after this long and write the adapter as it is (the schedule still assumes --steps).",
        ),
    ] = None,
    output: o.OutputChoice,
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
    from ...training.corpus import TokenCorpus
    from ...training.finetune import FinetuneConfig, Finetuner

    readout = output.readout
    settings = CacheSettings(
        kind=cache, window=parse_size(window), sink=sink, recent=recent, ratio=ratio, exact=exact
    )
    policy = settings.resolve()
    config = FinetuneConfig(
        policy=policy, seq_len=parse_size(seq_len), steps=steps, lr=lr, warmup=warmup, batch=batch,
        micro_batch=micro_batch, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
        train_norms=train_norms, train_embeddings=train_embeddings, gradient_checkpointing=checkpointing,
        distill=distill, seed=seed, save_every=save_every,
        quantize=quantization.kind if (quantization := parse_quantize(model.quantize)) else None,
    )  # fmt: skip
    config.validate()
    if max_minutes is not None and max_minutes <= 0:
        raise UsageError("--max-minutes must be positive")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UsageError(f"--out '{out}' is not empty: pass --resume to go on, or choose a new folder")
    if model.model != "default" and Path(model.model, "adapter_config.json").expanduser().is_file():
        raise UsageError("--model is an adapter: fine-tune its base model instead")
    loaded, fingerprint = load_base(model, config.quantize, readout)
    with readout.status("reading training data ..."):
        corpus = TokenCorpus.from_files(
            data, loaded.tokenizer, getattr(loaded.tokenizer, "eos_token_id", None)
        )
    trainer = Finetuner(loaded, model.model, config, corpus, out, base_fingerprint=fingerprint)
    trainable, total = trainer.trainable_counts()
    readout.info(
        f"{loaded.name} on {loaded.device}: training {format_count(trainable)} of {format_count(total)} "
        f"parameters on {format_count(len(corpus))} tokens from {len(corpus.sources)} files; "
        f"{policy.kind} window {policy.window}, sink {policy.sink}, recent {policy.recent}, "
        f"ratio {policy.ratio}"
    )
    stop = StopFlag()
    deadline = None if max_minutes is None else time.monotonic() + max_minutes * 60
    bar = readout.progress(
        "[bold]training[/]",
        "{task.completed}/{task.total} steps",
        "loss {task.fields[loss]}",
        "{task.fields[speed]}",
    )
    task = bar.add_task("train", total=steps, loss="-", speed="")

    def on_step(report: object) -> None:
        bar.update(
            task, completed=report.step, loss=f"{report.loss:.4f}",  # type: ignore[attr-defined]
            speed=f"{report.tokens_per_second:,.0f} tok/s",  # type: ignore[attr-defined]
        )  # fmt: skip
        if not readout.show_progress and not output.quiet and (report.step % 10 == 0 or report.step == steps):  # type: ignore[attr-defined]
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
    if output.as_json:
        write_json(data_out)
    elif finished:
        sys.stdout.write(f"adapter written to {out} ({result.steps} steps, loss {data_out['final_loss']})\n")
    else:
        sys.stdout.write(
            f"stopped at step {result.steps}: checkpoint in {out}/checkpoint; --resume goes on\n"
        )
    if stop():
        raise typer.Exit(130)


def load_base(model: o.ModelChoice, quantize: str | None, readout: Readout) -> tuple[LoadedModel, str | None]:
    """The base to train on, and (quantized: QLoRA) the fingerprint of its full-precision weights,
    which the adapter names so that it merges into them like any other adapter."""
    if quantize is None:
        return model.load(readout), None
    import torch

    from ...models.devices import resolve_device
    from ...models.loading import quantize_loaded
    from ...models.placing import LoadPlan
    from ...models.settings import weights_fingerprint

    target = resolve_device(model.device)
    if quantize == "int8" and target.type == "cuda":
        raise UsageError(
            "`finetune --quantize int8` runs on the CPU only (bitsandbytes' int8 computes in 16 bits "
            "on CUDA, fine-tuning in float32): use int4"
        )
    plan = LoadPlan.make(target, torch.float32, quantize)  # its refusals before the full model loads
    full = dataclasses.replace(model, device="cpu", quantize=None).load(readout)
    fingerprint = weights_fingerprint(full.model)
    with readout.status(f"quantizing the base to {quantize} ..."):
        return quantize_loaded(full, target, plan), fingerprint
