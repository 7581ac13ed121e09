"""Fine-tune a model to read FreqKV-compressed caches: LoRA + norms, compression in the loop.

Each training sequence runs through :mod:`.grouped_attention`, i.e. exactly the window
schedule of the inference engine, and gradients flow through every compression. The
output folder is a PEFT adapter plus ``trainable_params.safetensors`` (norms, optionally
embeddings) and ``freqkv.json`` (the policy it was tuned for and a fingerprint of the base
weights), which ``load_model`` merges on load.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import WRITE_ERRORS, OutputError, UsageError, write_failure
from ..models.device_map import is_spread
from ..models.loading import LoadedModel
from ..models.quantize import parameter_count, quantization_of
from ..models.settings import TunedSettings, weights_fingerprint
from . import checkpoints, grouped_attention
from .checkpoints import CHECKPOINT_DIR, STATE_FILE
from .config import FinetuneConfig, FinetuneResult, StepReport, lr_factor
from .corpus import TokenCorpus

__all__ = ["FinetuneConfig", "FinetuneResult", "Finetuner", "StepReport"]

FINAL_STAGING = ".adapter.tmp"
TRAINABLE_FILE = "trainable_params.safetensors"
LOG_FILE = "training_log.json"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
log = logging.getLogger("freqkv_cli")


class Finetuner:
    """Owns the PEFT-wrapped model, the optimizer and the output folder.

    ``loaded`` must be the untuned base in float32 (autocast gives bf16 matmuls on CUDA), its
    linear layers quantized as ``config.quantize`` says (QLoRA), with ``base_fingerprint`` then the
    fingerprint of the full-precision weights (:func:`freqkv_cli.models.loading.quantize_loaded`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        base_spec: str,
        config: FinetuneConfig,
        corpus: TokenCorpus,
        out: Path,
        base_fingerprint: str | None = None,
    ) -> None:
        from peft import LoraConfig, get_peft_model

        config.validate()
        self.config, self.corpus, self.out = config, corpus, Path(out)
        self.base_spec = base_spec
        self.device = loaded.device
        base = loaded.model
        if base.dtype != torch.float32:
            raise UsageError("fine-tuning loads the base in float32 (bf16 runs under autocast)")
        if is_spread(base):  # the grouped attention replays the schedule on one device
            raise UsageError("`finetune` trains on one device: drop `device_map`")
        quantized = quantization_of(base)
        if quantized != config.quantize:
            raise UsageError(
                f"the base's weights are {quantized or 'unquantized'} but `quantize` says "
                f"{config.quantize or 'unquantized'}"
            )
        # A quantized base (QLoRA) is fingerprinted as the full-precision weights it came from, so
        # that the adapter merges into them as any other adapter does (then quantized, if asked).
        if quantized is not None and base_fingerprint is None:
            raise UsageError("a quantized base needs the fingerprint of its full-precision weights")
        self.fingerprint = base_fingerprint or weights_fingerprint(base)
        self.teacher = None
        if config.distill > 0:
            native = int(getattr(base.config, "max_position_embeddings", 0) or 0)
            if native and config.seq_len > native:
                raise UsageError(
                    f"`distill` needs `seq_len` within the model's window ({native}): "
                    "the full-cache teacher must not extrapolate"
                )
            # The teacher is the untouched base with a full cache: the student learns to predict
            # from compressed caches what the base predicts from exact ones (and keeps its manners).
            # On a quantized base (QLoRA) the teacher is that quantized base.
            self.teacher = copy.deepcopy(base).eval().requires_grad_(False)
            if self.device.type == "cuda" and quantized is None:  # packed weights keep their dtype
                self.teacher.to(torch.bfloat16)
        self.eos_id = getattr(loaded.tokenizer, "eos_token_id", None)
        names = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
        missing = [t for t in config.target_modules if t not in names]
        if missing:
            raise UsageError(f"`target_modules`: this model has no module named {missing[0]!r}")
        torch.manual_seed(config.seed)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        base.requires_grad_(False)
        self.model = get_peft_model(base, lora)
        self.model.peft_config["default"].base_model_name_or_path = base_spec
        for name, param in self.model.named_parameters():
            module = name.rsplit(".", 1)[0]
            if (config.train_norms and module.endswith("norm")) or (
                config.train_embeddings and "embed_tokens" in module
            ):
                param.requires_grad_(True)
        self.causal_lm = self.model.base_model.model
        grouped_attention.register()
        self.causal_lm.set_attn_implementation(grouped_attention.ATTENTION_NAME)
        if config.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.causal_lm, "activation_checkpointing_enable"):  # the new name (5.2x)
                self.causal_lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(0.9, 0.95),
            fused=self.device.type == "cuda",
        )
        self.schedule = grouped_attention.GroupSchedule.build(
            config.policy.with_(selector="random") if config.policy.kind == "hybrid" else config.policy,
            self.causal_lm.model.rotary_emb,
            config.seq_len,
            self.device,
        )
        self.step = 0
        self.tokens = 0
        self.losses: list[float] = []

    # -- what is trained ------------------------------------------------------------------
    def trainable_counts(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return trainable, parameter_count(self.model)

    def _extra_trainables(self) -> dict[str, torch.Tensor]:
        """Norms/embeddings that are trained whole (saved beside the LoRA weights)."""
        return {
            name.removeprefix(_PEFT_PREFIX): param.detach().float().cpu().contiguous()
            for name, param in self.model.named_parameters()
            if param.requires_grad and "lora_" not in name
        }

    # -- one step -------------------------------------------------------------------------
    def loss(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed next-token cross-entropy of ``(B, seq_len)`` ids and the number of targets."""
        if self.config.policy.kind == "hybrid":
            # Plain text has no question to aim the exact slots at: each step keeps other random
            # spans exact, so the model learns to read exact entries beside the compressed ones.
            policy = self.config.policy.with_(
                selector="random", seed=self.config.seed * 1_000_003 + self.step
            )
            self.schedule = grouped_attention.GroupSchedule.build(
                policy, self.causal_lm.model.rotary_emb, self.config.seq_len, self.device
            )
        positions = self.schedule.positions[None].expand(input_ids.shape[0], -1)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            hidden = self.causal_lm.model(
                input_ids=input_ids,
                position_ids=positions,
                use_cache=False,
                **{grouped_attention.SCHEDULE_KWARG: self.schedule},
            ).last_hidden_state
            teacher_hidden = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_hidden = self.teacher.model(
                        input_ids=input_ids, use_cache=False
                    ).last_hidden_state
            total = hidden.new_zeros((), dtype=torch.float32)
            block = 1024
            # Logits per block, recomputed in backward: B x seq_len x vocab floats never coexist.
            for start in range(0, input_ids.shape[1] - 1, block):
                end = min(start + block, input_ids.shape[1] - 1)
                total = total + checkpoint(
                    self._block_loss,
                    hidden[:, start:end],
                    input_ids[:, start + 1 : end + 1],
                    None if teacher_hidden is None else teacher_hidden[:, start:end],
                    use_reentrant=False,
                )
        return total, input_ids.shape[0] * (input_ids.shape[1] - 1)

    def _block_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, teacher_hidden: torch.Tensor | None
    ) -> torch.Tensor:
        """Summed loss of one block: (1 - distill) * CE + distill * KL(teacher || student)."""
        logp = torch.log_softmax(self.causal_lm.lm_head(hidden).float(), dim=-1)
        ce = -logp.gather(-1, targets[..., None]).sum()
        if teacher_hidden is None:
            return ce
        teacher_logp = torch.log_softmax(self.teacher.lm_head(teacher_hidden).float(), dim=-1)  # type: ignore[union-attr]
        kl = (teacher_logp.exp() * (teacher_logp - logp)).sum()
        return (1 - self.config.distill) * ce + self.config.distill * kl

    def train_step(self) -> StepReport:
        config = self.config
        started = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(self.step, config.warmup, config.steps)
        batch = self.corpus.batch(self.step, config.batch, config.seq_len, config.seed).to(self.device)
        micro = config.micro_batch or config.batch
        count = batch.shape[0] * (batch.shape[1] - 1)
        total = 0.0
        for first in range(0, config.batch, micro):
            loss_sum, _ = self.loss(batch[first : first + micro])
            (loss_sum / count).backward()
            total += float(loss_sum.detach())
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += batch.numel()
        loss = total / count
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}: lower --lr")
        self.losses.append(loss)
        seconds = time.perf_counter() - started
        return StepReport(
            self.step, config.steps, loss, self.optimizer.param_groups[0]["lr"], self.tokens,
            batch.numel() / seconds, 0.0,
        )  # fmt: skip

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``out/checkpoint`` anew, so that one complete checkpoint exists at every moment
        (:func:`.checkpoints.save`), which :meth:`resume` finds."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        def write(staging: Path) -> None:
            # Embeddings are never adapted here: "auto" would look the base up on a hub to decide.
            lora = get_peft_model_state_dict(self.model, save_embedding_layers=False)
            lora = {k: v.detach().cpu().contiguous() for k, v in lora.items()}
            save_file(lora, str(staging / "adapter_model.safetensors"))
            save_file(self._extra_trainables(), str(staging / TRAINABLE_FILE))
            checkpoints.save_optimizer(self.optimizer.state_dict(), staging / "optimizer.pt")

        state = {"step": self.step, "tokens": self.tokens, "losses": self.losses}
        return checkpoints.save(self.out, write, {**state, "config": self.config.identity()})

    def resume(self) -> int:
        """Load ``out/checkpoint`` if there is one; returns the step it resumes from (0: none)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = checkpoints.recover(self.out)
        if folder is None:
            return 0
        try:
            state = json.loads((folder / STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"'{folder / STATE_FILE}' cannot be read ({exc}): delete '{folder}' to start over"
            ) from None
        written, asked = state.get("config") or {}, self.config.identity()
        # A setting a checkpoint predates (absent there) counts as its default, None.
        changed = ", ".join(
            f"{key} {_shown(written.get(key))} there, {_shown(asked.get(key))} here"
            for key in sorted(set(written) | set(asked))
            if written.get(key) != asked.get(key)
        )
        if changed:
            raise UsageError(
                f"'{folder}' was written with other settings ({changed}); use the same flags to resume, "
                "or a new `out`"
            )
        try:
            set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors")))
            extra = load_file(str(folder / TRAINABLE_FILE))
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for key, value in extra.items():
                    params[_PEFT_PREFIX + key].copy_(value)
            optimizer_state = torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True)
            self.optimizer.load_state_dict(optimizer_state)
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            reason = lines[0][:200] if lines else type(exc).__name__
            raise UsageError(f"'{folder}' is damaged ({reason}): delete it to start over") from None
        self.step, self.tokens, self.losses = state["step"], state["tokens"], list(state["losses"])
        return self.step

    # -- the whole run --------------------------------------------------------------------
    def run(
        self,
        *,
        resume: bool = False,
        on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        data_sources: list[dict] | None = None,
    ) -> FinetuneResult:
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else 0
        started = time.perf_counter()
        while self.step < self.config.steps:
            report = self.train_step()
            report.elapsed = time.perf_counter() - started
            if on_step is not None:
                on_step(report)
            if self.step % self.config.save_every == 0 or self.step == self.config.steps:
                self.save_checkpoint()
            if should_stop is not None and should_stop():
                self.save_checkpoint()
                break
        seconds = time.perf_counter() - started
        if self.step == self.config.steps:
            self.save_final(data_sources or self.corpus.sources, seconds)
        return FinetuneResult(self.out, self.step, self.tokens, seconds, list(self.losses), resumed)

    def save_final(self, data_sources: list[dict], seconds: float) -> None:
        """Write the adapter into OUT as one step: written whole beside it first, then moved in
        file by file with ``adapter_config.json`` (what makes OUT an adapter) out first and back
        last, so that OUT never loads as a mix of two versions or without its freqkv.json."""
        from safetensors.torch import save_file

        policy, config = self.config.policy, self.config
        trainable, _ = self.trainable_counts()
        settings = TunedSettings(
            window=policy.window,
            sink=policy.sink,
            recent=policy.recent,
            ratio=policy.ratio,
            seq_len=config.seq_len,
            base_model=self.base_spec,
            base_fingerprint=self.fingerprint,
            extra={
                "cache": policy.kind,
                "training": {
                    "steps": self.step,
                    "tokens": self.tokens,
                    "batch": config.batch,
                    "lr": config.lr,
                    "warmup": config.warmup,
                    "lora_r": config.lora_r,
                    "lora_alpha": config.lora_alpha,
                    "target_modules": list(config.target_modules),
                    "train_norms": config.train_norms,
                    "train_embeddings": config.train_embeddings,
                    "seed": config.seed,
                    "distill": config.distill,
                    "quantize": config.quantize,
                    "trainable_parameters": trainable,
                    "device": _device_name(self.device),
                    "seconds_last_run": round(seconds, 1),
                    "final_loss": round(self.losses[-1], 4) if self.losses else None,
                },
                "data": data_sources,
            },
        )
        staging = self.out / FINAL_STAGING
        try:
            checkpoints.remove_tree(staging)
            staging.mkdir(parents=True)
            self.model.save_pretrained(str(staging), save_embedding_layers=False)  # as above
            save_file(self._extra_trainables(), str(staging / TRAINABLE_FILE))
            settings.write(staging)
            (staging / LOG_FILE).write_text(json.dumps({"loss": [round(x, 5) for x in self.losses]}) + "\n")
            checkpoints.sync_files(staging)
            (self.out / ADAPTER_CONFIG).unlink(missing_ok=True)
            for path in sorted(staging.iterdir(), key=lambda path: path.name == ADAPTER_CONFIG):
                os.replace(path, self.out / path.name)
        except WRITE_ERRORS as exc:
            kept = checkpoints.checkpoint_step(self.out / CHECKPOINT_DIR)
            raise OutputError(
                f"cannot write the adapter to '{self.out}' ({write_failure(exc)}); "
                f"its checkpoint of step {kept} is kept: free some space and run again with `resume`"
            ) from None
        finally:
            checkpoints.remove_tree(staging)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _shown(value: object) -> str:
    """A setting as a resume refusal names it: a policy by its kind and sizes, None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "/".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return str(value)
