"""Merge a PEFT LoRA adapter (and the FreqKV reference's `trainable_params.bin`) into a base model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..errors import ModelError
from .settings import TunedSettings, weights_fingerprint

TRAINABLE_FILES = ("trainable_params.safetensors", "trainable_params.bin")
_PEFT_PREFIX = "base_model.model."


def load_trainable_params(folder: Path) -> dict[str, torch.Tensor] | None:
    """Embedding and norm weights trained beside the LoRA, keys as in the base model's state dict."""
    for name in TRAINABLE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                # weights_only: a .bin is a pickle, and pickles from strangers can run code.
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
            raise ModelError(f"'{path}' cannot be read safely: {str(exc).splitlines()[0][:200]}") from None
        return {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    return None


def merge_adapter(model: PreTrainedModel, folder: Path, settings: TunedSettings | None) -> PreTrainedModel:
    """Apply ``trainable_params`` (resizing the embedding if it grew), then merge the LoRA weights."""
    from peft import PeftModel

    if settings is not None and settings.base_fingerprint:
        found = weights_fingerprint(model)
        if found != settings.base_fingerprint:
            raise ModelError(
                f"adapter '{folder}' was trained on another base model "
                f"(fingerprint {settings.base_fingerprint}, this base has {found}): pass the right --base"
            )
    trainable = load_trainable_params(folder)
    if trainable is not None:
        embed = trainable.get("model.embed_tokens.weight")
        if embed is not None and embed.shape[0] != model.get_input_embeddings().weight.shape[0]:
            # The reference code adds a pad token: 32000 -> 32001 rows.
            model.resize_token_embeddings(embed.shape[0])
        own = model.state_dict()
        unknown = [k for k in trainable if k not in own]
        if unknown:
            raise ModelError(f"'{folder}': trainable params do not fit this base model (e.g. '{unknown[0]}')")
        for key, value in trainable.items():
            if own[key].shape != value.shape:
                raise ModelError(f"'{folder}': '{key}' has shape {tuple(value.shape)}, base has {tuple(own[key].shape)}")
        model.load_state_dict(trainable, strict=False)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"adapter '{folder}' cannot be applied: {str(exc).splitlines()[0][:200]}") from None
    return peft_model.merge_and_unload()
