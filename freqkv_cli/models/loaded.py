"""A loaded model: the weights, the tokenizer and what freqkv knows about them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..cache.head_profile import HeadProfile
from ..cache.policy import CHECKPOINT_KEYS, CachePolicy, CacheSettings
from ..errors import ModelError
from .settings import TunedSettings

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    name: str  # what to show the user
    family: str  # config.model_type
    settings: TunedSettings | None  # from freqkv.json beside the checkpoint, if any
    head_profile: HeadProfile | None = None  # retrieval heads for the hybrid cache, if measured
    head_profile_path: Path | None = None  # where it was read from
    heads_key: str = ""  # names this model's calibrated profile under FREQKV_HOME/heads

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def native_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def cache_policy(self, settings: CacheSettings) -> CachePolicy:
        """The policy ``settings`` resolve to on this model: explicit values, then the ones the
        checkpoint was tuned with, then the model's own (:meth:`CacheSettings.resolve`)."""
        tuned = self.settings
        checkpoint = None if tuned is None else {key: getattr(tuned, key) for key in CHECKPOINT_KEYS}
        return settings.resolve(checkpoint, self.native_window)


def check_family(config: object, source: str) -> str:
    family = getattr(config, "model_type", None) or "unknown"
    if family not in SUPPORTED_FAMILIES:
        raise ModelError(
            f"{source}: model family '{family}' is not supported; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return family
