"""`freqkv.json`: the FreqKV settings a checkpoint was tuned with, used as defaults."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import ModelError

SETTINGS_FILE = "freqkv.json"


@dataclass
class TunedSettings:
    window: int | None = None
    sink: int | None = None
    recent: int | None = None
    ratio: float | None = None
    seq_len: int | None = None
    base_model: str | None = None
    base_fingerprint: str | None = None
    extra: dict = field(default_factory=dict)  # anything else recorded (data sources, steps, ...)

    def write(self, folder: Path) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        data.update(self.extra)
        (folder / SETTINGS_FILE).write_text(json.dumps(data, indent=2) + "\n")


def read_settings(folder: Path) -> TunedSettings | None:
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"'{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"'{path}' must hold a JSON object")
    known = {"window": int, "sink": int, "recent": int, "ratio": float, "seq_len": int}
    values: dict = {}
    for key, kind in known.items():
        if key in data and data[key] is not None:
            if not isinstance(data[key], (int, float)) or isinstance(data[key], bool):
                raise ModelError(f"'{path}': '{key}' must be a number")
            if kind is int and not float(data[key]).is_integer():
                raise ModelError(f"'{path}': '{key}' must be a whole number, not {data[key]}")
            values[key] = kind(data[key])
    for key in ("base_model", "base_fingerprint"):
        if data.get(key) is not None:  # null means "not recorded", not the string "None"
            if not isinstance(data[key], str):
                raise ModelError(f"'{path}': '{key}' must be a string")
            values[key] = data[key]
    extra = {k: v for k, v in data.items() if k not in known and k not in ("base_model", "base_fingerprint")}
    return TunedSettings(**values, extra=extra)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the input embedding and first layer's weights: tells one base model from another.

    A quantized model hashes its unquantized tensors and the quantization's name: bitsandbytes
    lays packed weights out again for its CPU kernels on their first use, so they are no
    fingerprint; int8, int4 and the plain weights still differ (docs/DESIGN.md: saved memories).
    """
    from .quantize import quantization_of

    kind = quantization_of(model)
    hasher = hashlib.sha256()
    if kind is not None:
        hasher.update(kind.encode())
    for name, tensor in model.state_dict().items():
        if kind is not None and (not tensor.is_floating_point() or "quant" in name or "absmax" in name):
            continue
        if kind is not None and name.endswith(("SCB", "weight_format")):
            continue
        if "embed_tokens" in name or ".layers.0." in name:
            sample = tensor.detach().reshape(-1)[:65536].to(torch.float32).cpu()
            hasher.update(name.encode())
            hasher.update(sample.numpy().tobytes())
    return hasher.hexdigest()[:16]
