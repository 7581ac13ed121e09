"""What a fine-tuning run is asked to do, and what it reports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cache.policy import CachePolicy
from ..errors import UsageError


@dataclass
class FinetuneConfig:
    """What to train and how. ``batch`` sequences of ``seq_len`` tokens per optimizer step,
    run ``micro_batch`` at a time (0: all at once)."""

    policy: CachePolicy
    seq_len: int = 8192
    steps: int = 200
    lr: float = 3e-4
    warmup: int = 10
    batch: int = 8
    micro_batch: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    train_norms: bool = True
    train_embeddings: bool = False
    gradient_checkpointing: bool = True
    weight_decay: float = 0.0
    distill: float = 0.0  # weight of KL(full-cache base || student); 1 - distill goes to plain next-token CE
    seed: int = 0
    save_every: int = 50
    quantize: str | None = None  # the base's weights during training (QLoRA): None, int8, int4

    def validate(self) -> None:
        if self.policy.kind not in ("freqkv", "sink", "hybrid"):
            raise UsageError("`kind` must be freqkv, sink or hybrid for fine-tuning")
        checks = [
            (self.seq_len > self.policy.window, f"`seq_len` {self.seq_len} must exceed `window`"),
            (self.steps >= 1, "`steps` must be at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "`lr` must be a positive number"),
            (self.warmup >= 0, "`warmup` must be zero or more"),
            (self.batch >= 1, "`batch` must be at least 1"),
            (self.micro_batch >= 0, "`micro_batch` must be zero or more"),
            (self.lora_r >= 1, "`lora_r` must be at least 1"),
            (self.lora_alpha > 0, "`lora_alpha` must be positive"),
            (0 <= self.lora_dropout < 1, "`lora_dropout` must be in [0, 1)"),
            (bool(self.target_modules), "`target_modules` must name at least one module"),
            (self.save_every >= 1, "`save_every` must be at least 1"),
            (0.0 <= self.distill <= 1.0, "`distill` must be between 0 and 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        micro = self.micro_batch or self.batch
        if self.batch % micro:
            raise UsageError(f"`batch` {self.batch} must be a multiple of `micro_batch` {micro}")

    def identity(self) -> dict:
        """What must not change between a run and its resumption."""
        data = asdict(self)
        data["policy"] = asdict(self.policy)
        data["target_modules"] = list(self.target_modules)
        data.pop("save_every")
        return data


@dataclass
class StepReport:
    step: int  # 1-based, optimizer steps done
    steps: int
    loss: float  # mean token cross-entropy of this step
    lr: float
    tokens: int  # tokens trained on so far (this run and the runs it resumed)
    tokens_per_second: float  # this step
    elapsed: float  # seconds since this run started


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
