"""Merge a PEFT LoRA adapter (and the FreqKV reference's `trainable_params.bin`) into a base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from ..errors import ModelError, is_out_of_memory
from .integrity import load_failure
from .loaded import LoadedModel
from .settings import SETTINGS_FILE, TunedSettings, read_settings, weights_fingerprint

if TYPE_CHECKING:
    from .placing import LoadPlan

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
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise ModelError(f"'{path}' cannot be read safely: {load_failure(exc)}") from None
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise ModelError(f"'{path}' must hold a mapping of parameter names to tensors")
        return {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    return None


def _resize_like_reference(model: PreTrainedModel, rows: int) -> None:
    """Resize the vocabulary as the reference's ``smart_tokenizer_and_embedding_resize`` did.

    New rows of the input and output embeddings are the mean of the old rows, exactly.
    (transformers' own ``mean_resizing`` samples them at random around the mean, so the
    untrained output row of the added token would differ from the one the model was
    trained with, and from one load to the next.)
    """
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows, mean_resizing=False)
    added = rows - old
    if added <= 0:
        return
    with torch.no_grad():
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is None:
                continue
            weight = module.weight
            weight[-added:] = weight[:-added].mean(dim=0, keepdim=True)


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
            _resize_like_reference(model, embed.shape[0])
        own = model.state_dict()
        unknown = [k for k in trainable if k not in own]
        if unknown:
            raise ModelError(f"'{folder}': trainable params do not fit this base model (e.g. '{unknown[0]}')")
        for key, value in trainable.items():
            if own[key].shape != value.shape:
                raise ModelError(
                    f"'{folder}': '{key}' has shape {tuple(value.shape)}, base has {tuple(own[key].shape)}"
                )
        model.load_state_dict(trainable, strict=False)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:  # a damaged file, or a .bin pickle that torch refuses to unpickle
        if is_out_of_memory(exc):
            raise
        raise ModelError(f"adapter '{folder}' cannot be applied: {load_failure(exc)}") from None
    return peft_model.merge_and_unload()


def load_adapter(
    path: Path, base: str | None, target: torch.device, common: dict, plan: LoadPlan | None = None
) -> LoadedModel:
    """A LoRA adapter folder merged into its base (``--base``, else the one it names)."""
    from .loading import load_model, log, one_line, placed

    try:
        adapter_config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"'{path / 'adapter_config.json'}' cannot be read: {one_line(exc)}") from None
    if not isinstance(adapter_config, dict):
        raise ModelError(f"'{path / 'adapter_config.json'}' must hold a JSON object")
    base_spec = base or adapter_config.get("base_model_name_or_path")
    settings = read_settings(path)
    if not base_spec and settings is not None:
        base_spec = settings.base_model
    if not base_spec:
        raise ModelError(f"adapter '{path}' does not name its base model: pass --base MODEL")
    if base_spec != "default" and not Path(base_spec).expanduser().exists():
        raise ModelError(
            f"adapter '{path}' needs base model '{base_spec}', not found here: pass --base MODEL"
        )
    # Merge on the CPU in float32, then move: merging in bf16 would round twice.
    # 'default' as a base is the plain embedded model, never the shipped tuned one.
    loaded = load_model(
        base_spec, device="cpu", dtype="float32", trust_remote_code=common["trust_remote_code"], untuned=True
    )
    model = merge_adapter(loaded.model, path, settings)
    model = model.to(common["dtype"])
    if plan is not None and not plan.plain:  # the merged weights quantized/placed, tensor by tensor
        model = plan.place(model, common)
    if settings is None:  # said once it loaded: a refusal stays one line
        log.warning(
            "adapter '%s' has no %s: the cache settings it was tuned with are unknown, the defaults "
            "are used (pass `window`, `sink`, `recent` and `ratio` as in training)",
            path,
            SETTINGS_FILE,
        )
    return LoadedModel(placed(model, target, plan), loaded.tokenizer, str(path), loaded.family, settings)
