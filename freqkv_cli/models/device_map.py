"""Where a model's weights live: one device, or spread by accelerate's ``device_map``.

``--device-map auto|balanced|sequential|FILE.json`` and ``--max-memory 0=20GiB,cpu=64GiB`` become a
:class:`Placement`, handed to ``from_pretrained`` as ``device_map`` and ``max_memory``: transformers
places each module and accelerate's hooks move activations between devices. The cache follows:
each layer's slots are allocated where that layer's keys are computed (``cache/layers.py``), and a
compression round only ever stacks layers of one device (``cache/rounds.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from .held import held_tensors

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# What a device-map entry may name: a GPU index, cuda:N, cpu, mps, or disk (offloaded weights).
_DEVICE = re.compile(r"^(cpu|mps|disk|cuda(:\d+)?|\d+)$")
_MEMORY = re.compile(r"^\s*(\d+(\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    """``device_map``: a strategy name or module -> device; ``max_memory``: device -> bytes cap."""

    device_map: str | dict[str, int | str]
    max_memory: dict[int | str, int] | None = None
    source: str = ""  # what the user gave (a strategy or a file), to name it in messages

    def from_pretrained_kwargs(self, offload_folder: Path) -> dict:
        kwargs: dict = {"device_map": self.device_map, "offload_folder": str(offload_folder)}
        if self.max_memory is not None:
            kwargs["max_memory"] = self.max_memory
        return kwargs

    def describe(self) -> str:
        caps = ""
        if self.max_memory:
            caps = " with " + ", ".join(f"{k}={v >> 20} MiB" for k, v in self.max_memory.items())
        return f"{self.source}{caps}"


def parse_placement(device_map: str | None, max_memory: str | None) -> Placement | None:
    """The placement ``--device-map``/``--max-memory`` ask for, checked; None: one device as before."""
    if device_map is None:
        if max_memory is not None:
            raise UsageError("`max_memory` caps the devices of a `device_map`: give `device_map` too")
        return None
    text = device_map.strip()
    caps = parse_max_memory(max_memory) if max_memory is not None else None
    if text.lower() in STRATEGIES:
        return Placement(text.lower(), caps, text.lower())
    return Placement(read_map_file(Path(text).expanduser()), caps, text)


def read_map_file(path: Path) -> dict[str, int | str]:
    """A JSON object of module name -> device (``{"model.layers.0": 0, "lm_head": "cpu"}``)."""
    if not path.is_file():
        raise UsageError(f"`device_map` '{path}' is neither one of {', '.join(STRATEGIES)} nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"`device_map` file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"`device_map` file '{path}' must hold a JSON object: module name -> device")
    checked: dict[str, int | str] = {}
    for module, device in data.items():
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise UsageError(f"`device_map` file '{path}': '{module}' -> {device!r} is not a device")
        value = str(device).strip().lower()
        if not _DEVICE.match(value):
            raise UsageError(
                f"`device_map` file '{path}': '{module}' -> '{device}' is not a device "
                "(use a GPU index, cuda:N, cpu, mps or disk)"
            )
        checked[module] = int(value) if value.isdigit() else value
    if checked.get("model.embed_tokens") == "disk":  # token ids go where the embedding computes
        raise UsageError(f"`device_map` file '{path}': the embedding (model.embed_tokens) cannot be on disk")
    check_devices_exist(checked.values(), str(path))
    return checked


def check_devices_exist(devices: Iterable[int | str], source: str) -> None:
    """Refuse a GPU that is not here in one line, before transformers says it in a traceback."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        index = device if isinstance(device, int) else None
        if isinstance(device, str) and device.startswith("cuda"):
            index = int(device.split(":")[1]) if ":" in device else 0
        if index is not None and index >= count:
            raise UsageError(f"{source} places weights on GPU {index}, but this machine has {count} GPU(s)")
        if device == "mps" and not torch.backends.mps.is_available():
            raise UsageError(f"{source} places weights on mps, which is not available here")


def parse_max_memory(text: str) -> dict[int | str, int]:
    """``0=20GiB,cpu=64GiB`` -> ``{0: 20 << 30, "cpu": 64 << 30}`` (units KB..TB, KiB..TiB)."""
    caps: dict[int | str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        device, sep, amount = part.partition("=")
        device, match = device.strip().lower(), _MEMORY.match(amount)
        if not sep or not match or not _DEVICE.match(device) or device == "disk":
            raise UsageError(f"`max_memory` '{part.strip()}' is not DEVICE=SIZE (e.g. 0=20GiB,cpu=64GiB)")
        caps[int(device) if device.isdigit() else device] = _bytes(match)
    if not caps:
        raise UsageError("`max_memory` is empty: give DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=64GiB")
    check_devices_exist(caps, "`max_memory`")
    return caps


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})


def _bytes(match: re.Match) -> int:
    unit = (match.group(3) or "b").lower()
    return int(float(match.group(1)) * _UNITS[unit])


def devices_of(model: torch.nn.Module) -> dict[str, int]:
    """Weight bytes per device the model computes on (``cpu``, ``cuda:0``, ``disk``), in place order,
    quantized weights' scales included."""

    mapping = getattr(model, "hf_device_map", None)
    found: dict[str, int] = {}
    for parameter in [*model.parameters(), *model.buffers()]:
        for tensor in held_tensors(parameter):
            name = "disk" if tensor.device.type == "meta" else str(tensor.device)
            found[name] = found.get(name, 0) + tensor.numel() * tensor.element_size()
    if mapping and "disk" in {str(v) for v in mapping.values()}:
        found.setdefault("disk", 0)
    return found


def gpu_memory(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{"GPU": (allocated, peak)}`` for a model on one GPU; ``GPU0``, ``GPU1``, ... for each GPU
    a device map uses. Empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    used = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    mapping = getattr(model, "hf_device_map", None) or {}
    used = sorted(set(used) | {v for v in mapping.values() if isinstance(v, int)})
    one = len(used) == 1
    return {
        ("GPU" if one else f"GPU{i}"): (torch.cuda.memory_allocated(i), torch.cuda.max_memory_allocated(i))
        for i in used
    }


def first_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the device of the embedding (accelerate moves the rest)."""
    embed = model.get_input_embeddings()
    weight = getattr(embed, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    mapping = getattr(model, "hf_device_map", None) or {}
    for device in mapping.values():
        if str(device) not in ("disk", "meta"):
            return torch.device(f"cuda:{device}" if isinstance(device, int) else str(device))
    return torch.device("cpu")


def is_spread(model: torch.nn.Module) -> bool:
    """True when accelerate placed the model's modules (a device map), not one ``.to(device)``."""
    mapping = getattr(model, "hf_device_map", None)
    return bool(mapping) and (len({str(v) for v in mapping.values()}) > 1 or "" not in mapping)
