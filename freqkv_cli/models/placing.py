"""How a model is loaded: on one device as before, or quantized and/or spread by a device map.

:class:`LoadPlan` is what ``load_model`` decides from ``quantize``, ``device_map`` and
``max_memory``; it gives ``from_pretrained`` its arguments, finds or keeps the pre-quantized copy
of a checkpoint, and turns running out of memory while loading into a message that says what
would fit.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OutOfMemoryError, UsageError, is_out_of_memory
from .device_map import Placement, parse_placement
from .quantize import (
    CopyHold,
    Quantization,
    check_quantize_device,
    hold_prequantized,
    parse_quantize,
    prequantized_folder,
    remove_superseded,
    requantize,
    save_prequantized,
    usable_prequantized,
)

# Copies found by kept_folder, held until load_from ties each to the model read from it.
_HOLDS: dict[Path, CopyHold] = {}


@dataclass(frozen=True)
class LoadPlan:
    """``target``/``dtype``: as ``--device``/``--dtype`` resolved; ``quantization`` and
    ``placement``: None unless asked for. A plain plan loads as freqkv always did."""

    target: torch.device
    dtype: torch.dtype
    quantization: Quantization | None = None
    placement: Placement | None = None

    @classmethod
    def make(
        cls,
        target: torch.device,
        dtype: torch.dtype,
        quantize: str | None = None,
        device_map: str | None = None,
        max_memory: str | None = None,
    ) -> LoadPlan:
        quantization = parse_quantize(quantize)
        placement = parse_placement(device_map, max_memory)
        if quantization is not None:
            check_quantize_device(quantization, target)
            if quantization.kind == "int8" and dtype == torch.float32 and target.type == "cuda":
                raise UsageError(
                    "`quantize` int8 computes in 16 bits on CUDA: use --dtype bfloat16 or float16"
                )
        if placement is not None and target.type == "mps":
            raise UsageError("`device_map` spreads a model over CUDA GPUs and the CPU, not mps")
        return cls(target, dtype, quantization, placement)

    @property
    def plain(self) -> bool:
        return self.quantization is None and self.placement is None

    def kwargs(self) -> dict:
        """``from_pretrained`` arguments beyond dtype: where each module goes, how it is quantized."""
        kwargs: dict = {}
        if self.placement is not None:
            kwargs.update(self.placement.from_pretrained_kwargs(_offload_folder()))
        else:  # quantized on one device: each tensor is quantized as it arrives there
            kwargs["device_map"] = {"": str(self.target)}
        if self.quantization is not None:
            kwargs["quantization_config"] = self.quantization.config(self.dtype)
        return kwargs

    def prequantized(self, source: Path) -> Path | None:
        """The pre-quantized copy of ``source`` (a folder, a .gguf, an adapter folder) for this plan."""
        if self.quantization is None:
            return None
        return prequantized_folder(source, self.quantization, extra=str(self.dtype))

    def load_kept(
        self, source: Path, load: Callable[[Path, dict], torch.nn.Module]
    ) -> torch.nn.Module | None:
        """The model from its pre-quantized copy, if one is kept and intact; else None."""
        kept = self.kept_folder(source)
        return None if kept is None else self.load_from(kept, load)

    def load_from(self, kept: Path, load: Callable[[Path, dict], torch.nn.Module]) -> torch.nn.Module:
        """The model from the checked copy ``kept``, which stays held while the model lives."""
        kwargs = self.kwargs()
        kwargs.pop("quantization_config", None)  # the copy's config.json says how it is quantized
        hold = _HOLDS.pop(kept, None)
        try:
            model = load(kept, kwargs)
        except BaseException:
            if hold is not None:
                hold.release()
            raise
        if hold is not None:
            hold.tie(model)
        return model

    def kept_folder(self, source: Path) -> Path | None:
        """The intact pre-quantized copy of ``source``, if one is kept (held for :meth:`load_from`)."""
        kept = self.prequantized(source)
        hold = hold_prequantized(kept) if kept is not None else None
        if hold is None:
            return None
        previous = _HOLDS.pop(kept, None)
        if previous is not None:
            previous.release()
        _HOLDS[kept] = hold
        remove_superseded(kept, source, self.quantization, str(self.dtype))
        return kept

    def keep(self, source: Path, model: torch.nn.Module, tokenizer: object) -> None:
        """Keep the quantized ``model`` of ``source`` for the next load."""
        kept = self.prequantized(source)
        if kept is None:
            return
        if usable_prequantized(kept) or save_prequantized(model, tokenizer, kept):
            remove_superseded(kept, source, self.quantization, str(self.dtype))

    def place(self, model: torch.nn.Module, common: dict) -> torch.nn.Module:
        """Quantize and/or spread a model built in memory on the CPU (a GGUF, a merged adapter)."""
        kwargs = {"dtype": common["dtype"], **self.kwargs()}
        return requantize(model, kwargs)

    def check_placed(self, model: torch.nn.Module) -> torch.nn.Module:
        """Token ids enter at the embedding: it must be on a device, not offloaded to disk."""
        weight = getattr(model.get_input_embeddings(), "weight", None)
        if weight is not None and weight.device.type == "meta":
            raise UsageError(
                "`max_memory` leaves no device room for the embedding (the device map put it on disk): "
                "raise the caps"
            )
        return model

    @contextlib.contextmanager
    def explained(self, name: str) -> Iterator[None]:
        """Running out of memory while loading says what would fit."""
        try:
            yield
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise OutOfMemoryError(self.what_would_fit(name)) from None

    def check_fits(self, folder: Path, name: str) -> None:
        """Before reading any weight: refuse a model whose weights alone exceed the GPU's free
        memory, saying what would fit (one device only: a device map fits itself to its caps)."""
        if self.target.type != "cuda" or self.placement is not None:
            return
        needed = estimated_weight_bytes(folder, self.dtype.itemsize, self.quantization)
        free = torch.cuda.mem_get_info(self.target)[0]
        if needed is not None and needed > free:
            hint = self.what_would_fit(name, weights_alone=True)
            raise OutOfMemoryError(
                f"{hint} (its weights need about {needed / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB are free on {self.target})"
            )

    def what_would_fit(self, name: str, weights_alone: bool = False) -> str:
        """What to try when ``name`` does not fit: fewer bytes a weight, some layers on other
        devices (only where there is a GPU to spread over), a smaller window (less cache; not
        when the weights alone are too big), a smaller model."""
        where = "the GPU" if self.target.type == "cuda" else "memory"
        hints = []
        if self.quantization is None:
            hints.append("--quantize int4 (about a quarter of the 16-bit weights) or int8 (half)")
        elif self.quantization.kind == "int8":
            hints.append("--quantize int4 (about half of int8's weights)")
        if self.placement is None and torch.cuda.is_available():
            hints.append(
                "--device-map auto (layers spread over the GPUs and the CPU; --max-memory caps each)"
            )
        if not weights_alone:
            hints.append("a smaller --window")
        hints.append("a smaller model")
        return f"model '{name}' does not fit in {where}: try " + ", ".join(hints)


_OFFLOAD: list[Path] = []


def _offload_folder() -> Path:
    """Where a device map's 'disk' entries keep their weights: one private folder per process."""
    if not _OFFLOAD:
        from .default import freqkv_home

        root = freqkv_home() / "offload"
        root.mkdir(parents=True, exist_ok=True)
        _OFFLOAD.append(Path(tempfile.mkdtemp(prefix="run-", dir=root)))
        atexit.register(shutil.rmtree, _OFFLOAD[0], True)
    return _OFFLOAD[0]


def estimated_weight_bytes(folder: Path, element: int, quantization: Quantization | None) -> int | None:
    """Weight bytes of a Llama-style checkpoint from its config.json (None if it cannot be told):
    the linear layers at their quantized bytes a weight (scales included), the rest as is."""
    import json

    try:
        c = json.loads((folder / "config.json").read_text())
        hidden, layers, inter = (
            int(c["hidden_size"]),
            int(c["num_hidden_layers"]),
            int(c["intermediate_size"]),
        )
        heads = int(c["num_attention_heads"])
        kv = int(c.get("num_key_value_heads") or heads)
        head_dim = int(c.get("head_dim") or hidden // heads)
        vocab = int(c["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    linear = layers * (2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + 3 * hidden * inter)
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    per_weight = element if quantization is None else quantization.bytes_per_weight
    return int(linear * per_weight + embeddings * element)
