"""Weight quantization (``--quantize int8|int4``) through bitsandbytes, and pre-quantized copies.

int4 is NF4 weight-only (blocks of 64 weights share one absmax; weights are de-quantized to the
compute dtype inside each matmul); int8 is LLM.int8 (int8 weights, outlier features kept in 16
bits). Embeddings, norms and ``lm_head`` stay in the model's dtype. Why bitsandbytes and not
torchao: docs/DESIGN.md, figures in docs/BENCHMARKS.md section 8.

transformers quantizes each tensor as it is read (no full 16-bit copy on the device). The result
is saved once under ``FREQKV_HOME/quantized/`` as safetensors (no pickle), written beside its
place and renamed there, so a second load reads a quarter of the bytes and quantizes nothing.

One copy is kept per source, kind and dtype: a copy's name is ``NAME-KIND-IDENTITY-DIGEST``, where
IDENTITY names the source's path, the kind and the dtype, and DIGEST what makes a copy current
(the recipe, the library versions, the source files' sizes and mtimes). Once the current copy is
written, or found intact, the copies of the same IDENTITY with another DIGEST are removed: no
load could use them again, short of going back to older files or an older freqkv, bitsandbytes
or transformers, and an 8B model's copy is 5 GiB. Each is renamed away first (a reader never
sees half a folder), and not removed while a model loaded from it is alive in any freqkv
process (each holds a shared lock on its copy's ``freqkv-in-use`` file; POSIX only). Two
environments with different library versions sharing a FREQKV_HOME therefore take turns: each
quantizes again after the other ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import WRITE_ERRORS, ModelError, UsageError, write_failure

QUANTIZE_CHOICES = ("int8", "int4")
INT8_THRESHOLD = 1.0
NF4_BLOCKSIZE = 64
RECIPE = f"nf4-b{NF4_BLOCKSIZE},int8-t{INT8_THRESHOLD}"  # a changed recipe quantizes again
# Recipes of copies named NAME-KIND-DIGEST (no IDENTITY): still recognised, so they are removed.
_UNNAMED_RECIPES = ("nf4-b64,int8-t2.0", "nf4-b64,int8-t1.0")
IN_USE_FILE = "freqkv-in-use"
log = logging.getLogger("freqkv_cli")


class _CastNotice(logging.Filter):
    """bitsandbytes logs a warning on every int8 matmul fed float32 (it computes in float16, as
    docs/DESIGN.md says): thousands of lines a document, about a matmul the user did not write."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_CastNotice())


@dataclass(frozen=True)
class Quantization:
    """``kind``: int8 (LLM.int8) or int4 (NF4); the compute dtype is the model's ``--dtype``."""

    kind: str

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4

    @property
    def bytes_per_weight(self) -> float:
        """Bytes a linear layer's weight takes, its scales included: NF4 packs two weights a byte
        beside one float32 absmax a block; LLM.int8 adds one float32 scale a row (ignored)."""
        return 1.0 if self.kind == "int8" else 0.5 + 4 / NF4_BLOCKSIZE

    def config(self, compute_dtype: torch.dtype) -> object:
        """The ``quantization_config`` for ``from_pretrained``."""
        from transformers import BitsAndBytesConfig

        require_bitsandbytes()
        if self.kind == "int8":
            # Outlier features above 1.0 (not bitsandbytes' 6.0) stay 16-bit: on the embedded model
            # perplexity +0.94% (Paradise Lost, 4k, full cache) against +1.75% at 6.0, +1.10% at 2.0
            # and +0.69% at 0.5 (docs/BENCHMARKS.md section 8). Weights stay int8 at any threshold.
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            # No double quantization: 0.4 bit/weight less, measured slower decode on the GPU.
            bnb_4bit_use_double_quant=False,
        )

    def describe(self) -> str:
        return "int8 (bitsandbytes LLM.int8)" if self.kind == "int8" else "int4 (bitsandbytes NF4)"


def parse_quantize(text: str | None) -> Quantization | None:
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    kind = text.strip().lower()
    if kind not in QUANTIZE_CHOICES:
        raise UsageError(f"`quantize` '{text}' is not one of {', '.join(QUANTIZE_CHOICES)}")
    return Quantization(kind)


def require_bitsandbytes() -> object:
    """Import bitsandbytes quietly and offline: on CPUs with AVX512-BF16 it would otherwise try to
    fetch a kernel from a model hub (and warn when it cannot); freqkv never downloads."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    quiet = logging.getLogger("bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ModelError(
            f"`quantize` needs the 'bitsandbytes' package (pip install bitsandbytes): {exc}"
        ) from None
    finally:
        quiet.setLevel(level)
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    return bitsandbytes


def check_quantize_device(quantization: Quantization, device: torch.device) -> None:
    """bitsandbytes runs on CUDA and on CPUs; on MPS it has no int8 and only a partial int4."""
    if device.type == "mps":
        raise UsageError(f"`quantize` {quantization.kind} is not supported on mps: use --device cpu")


def quantization_of(model: torch.nn.Module) -> str | None:
    """``int8`` / ``int4`` for a model loaded quantized, else None."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    data = config if isinstance(config, dict) else config.to_dict()
    if data.get("load_in_4bit"):
        return "int4"
    if data.get("load_in_8bit"):
        return "int8"
    return None


def parameter_count(model: torch.nn.Module) -> int:
    """The model's weights, counted as the unquantized model has them: a 4-bit weight's tensor
    holds two a byte (its ``quant_state`` keeps the shape they were quantized from)."""
    total = 0
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        total += state.shape.numel() if state is not None else parameter.numel()
    return total


def weight_facts(model: torch.nn.Module) -> dict:
    """What ``freqkv info`` reports of the weights: bytes held, quantization, where they are."""
    from .device_map import devices_of

    placed = devices_of(model)
    mapping = getattr(model, "hf_device_map", None)
    return {
        "weight_bytes": sum(placed.values()),
        "quantization": quantization_of(model),
        "weight_bytes_by_device": placed,
        "device_map": {k: str(v) for k, v in mapping.items()} if mapping else None,
    }


def describe_weights(facts: dict) -> str:
    """One line of :func:`weight_facts`: bytes, quantization, and per device when spread."""
    from ..sizes import format_bytes

    kind = facts["quantization"]
    line = f"{format_bytes(facts['weight_bytes'])} · " + (
        Quantization(kind).describe() if kind else "not quantized"
    )
    if facts["device_map"]:
        line += " · " + ", ".join(
            f"{d} {format_bytes(b)}" for d, b in facts["weight_bytes_by_device"].items()
        )
    return line


# -- pre-quantized copies under FREQKV_HOME ------------------------------------------------------
def prequantized_folder(source: Path, quantization: Quantization, extra: str = "") -> Path:
    """Where the quantized copy of ``source`` (a folder or a .gguf file) is kept. Named by the
    source's path, the sizes and mtimes of its files, the quantization and the library versions:
    a changed checkpoint or a new bitsandbytes gets a new copy, without hashing gigabytes."""
    from .default import freqkv_home

    source = source.resolve()
    identity = hashlib.sha256(f"{source}\n{quantization.kind}\n{extra}".encode()).hexdigest()[:8]
    digest = _digest(source, quantization, RECIPE, extra)
    return freqkv_home() / "quantized" / f"{source.stem}-{quantization.kind}-{identity}-{digest}"


def _digest(source: Path, quantization: Quantization, recipe: str, extra: str) -> str:
    import transformers

    bitsandbytes = require_bitsandbytes()
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    facts = [
        str(source),
        quantization.kind,
        recipe,
        bitsandbytes.__version__,
        transformers.__version__,
        extra,
    ]
    for path in files:
        stat = path.stat()
        facts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def remove_superseded(current: Path, source: Path, quantization: Quantization, extra: str = "") -> None:
    """Remove the other copies of ``current``'s source, kind and dtype (see the module's
    docstring), and what an interrupted removal left; a copy in use stays."""
    source = source.resolve()
    prefix = current.name.rsplit("-", 1)[0] + "-"
    unnamed = {
        f"{source.stem}-{quantization.kind}-{_digest(source, quantization, recipe, extra)}"
        for recipe in _UNNAMED_RECIPES
    }
    try:
        siblings = list(current.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        if path.name.startswith(".removing-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path != current and (path.name.startswith(prefix) or path.name in unnamed):
            _remove_unless_in_use(path)


def _remove_unless_in_use(folder: Path) -> None:
    try:
        handle = os.open(folder / IN_USE_FILE, os.O_RDONLY)
    except FileNotFoundError:
        handle = None  # written without the file: no freqkv that could hold it
    except OSError:
        return
    gone = folder.with_name(f".removing-{folder.name}-{os.getpid()}")
    try:
        if handle is not None and _fcntl is not None:
            _fcntl.flock(handle, _fcntl.LOCK_EX | _fcntl.LOCK_NB)  # fails while a reader holds it
        os.rename(folder, gone)
    except OSError:
        return
    finally:
        if handle is not None:
            os.close(handle)
    shutil.rmtree(gone, ignore_errors=True)
    log.info("removed the superseded quantized copy '%s'", folder)


try:
    import fcntl as _fcntl
except ImportError:  # Windows: a folder whose files are open cannot be renamed there anyway
    _fcntl = None


class CopyHold:
    """A shared lock on a kept copy's ``freqkv-in-use`` file, so that no freqkv removes the copy
    while it is being read, nor while the model read from it lives (:meth:`tie`)."""

    def __init__(self, handle: int | None) -> None:
        self.handle = handle

    def tie(self, model: object) -> None:
        if self.handle is not None:
            weakref.finalize(model, os.close, self.handle)
            self.handle = None

    def release(self) -> None:
        if self.handle is not None:
            os.close(self.handle)
            self.handle = None


def hold_prequantized(folder: Path) -> CopyHold | None:
    """Hold the copy in ``folder`` if it is usable; None if it is not (or was just removed)."""
    handle = None
    try:
        handle = os.open(folder / IN_USE_FILE, os.O_RDONLY)
        if _fcntl is not None:
            _fcntl.flock(handle, _fcntl.LOCK_SH)  # waits out a removal under way
        if os.fstat(handle).st_ino != os.stat(folder / IN_USE_FILE).st_ino:
            raise FileNotFoundError  # removed while we waited, and written again since
    except OSError:
        if handle is not None:
            os.close(handle)
        if not (folder / IN_USE_FILE).exists() and (folder / "config.json").is_file():
            handle = None  # written without the file: usable, held by nothing
        else:
            return None
    hold = CopyHold(handle)
    if not usable_prequantized(folder):
        hold.release()
        return None
    return hold


def save_prequantized(model: torch.nn.Module, tokenizer: object, folder: Path) -> bool:
    """Write the quantized model and tokenizer beside ``folder`` with checksums, then rename it
    there; True if it was. A folder that cannot be written costs the next load its quantizing,
    not this one."""
    import tempfile

    from .integrity import share, write_manifest

    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".quantize-", dir=folder.parent))
        model.save_pretrained(staging)  # safetensors; bitsandbytes' quant states as tensors
        tokenizer.save_pretrained(staging)  # type: ignore[attr-defined]
        write_manifest(staging)
        (staging / IN_USE_FILE).touch()  # not in the manifest: only ever locked, never written
        share(staging)
        if folder.exists():  # found damaged: moved away, unless a model read from it still lives
            _remove_unless_in_use(folder)
        os.replace(staging, folder)
        return True
    except WRITE_ERRORS as exc:
        log.warning(
            "could not keep the quantized copy in '%s' (%s): the next load quantizes again",
            folder,
            write_failure(exc),
        )
        return False
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def usable_prequantized(folder: Path) -> bool:
    from .integrity import has_manifest, verify_manifest

    if not (folder / "config.json").is_file() or not has_manifest(folder):
        return False
    problem = verify_manifest(folder)
    if problem is not None:
        log.warning("the quantized copy in '%s' is damaged (%s): quantizing again", folder, problem)
        return False
    return True


def requantize(model: torch.nn.Module, kwargs: dict) -> torch.nn.Module:
    """Quantize a model already in memory (a de-quantized GGUF, a merged adapter), tensor by tensor
    as transformers loads its state dict: the result on the device is small, whatever the source."""
    state = model.state_dict()
    config = model.config
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    del model
    return type_of(config).from_pretrained(None, config=config, state_dict=state, **kwargs)


def type_of(config: object) -> type:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM._model_mapping[type(config)]
