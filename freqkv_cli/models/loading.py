"""Load a model + tokenizer + the FreqKV settings it was tuned with, from what the user names.

Accepted: ``default`` (the embedded SmolLM2-135M-Instruct), a Hugging Face model folder,
a ``.gguf`` file, or a PEFT LoRA adapter folder (the FreqKV reference training output
included: adapter + ``trainable_params.bin``), merged on load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..cache.head_profile import PROFILE_FILE, HeadProfile
from ..errors import WRITE_ERRORS, FreqKVError, ModelError, is_out_of_memory, write_failure
from .default import (
    DEFAULT_MODEL_NAME,
    TUNED_MODEL_NAME,
    adapter_digest,
    default_gguf_path,
    freqkv_home,
    shipped_adapter_path,
)
from .devices import resolve_device, resolve_dtype
from .integrity import (
    check_gguf,
    check_safetensors,
    has_manifest,
    load_failure,
    share,
    verify_manifest,
    write_manifest,
)
from .loaded import SUPPORTED_FAMILIES, LoadedModel, check_family
from .placing import LoadPlan
from .settings import SETTINGS_FILE, read_settings

__all__ = ["SUPPORTED_FAMILIES", "LoadedModel", "check_family", "load_model"]

# Warnings for the user (a rebuilt cache, an adapter without freqkv.json): the CLI shows them.
log = logging.getLogger("freqkv_cli")


def load_model(
    spec: str = "default",
    *,
    device: str = "auto",
    dtype: str = "auto",
    base: str | None = None,
    trust_remote_code: bool = False,
    untuned: bool = False,
    quantize: str | None = None,
    device_map: str | None = None,
    max_memory: str | None = None,
) -> LoadedModel:
    """Load what ``spec`` names onto ``device`` in ``dtype`` (``auto``: bf16 on CUDA, fp32 otherwise).

    ``default`` is the embedded model with the shipped FreqKV-tuned adapter merged in;
    ``untuned=True`` gives the plain embedded weights (for comparison, and as the base of adapters).
    ``quantize`` (int8, int4), ``device_map`` (auto, balanced, sequential, a JSON file) and
    ``max_memory`` (``0=20GiB,cpu=64GiB``): see :mod:`.placing`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a library caller too: never reach a hub
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    plan = LoadPlan.make(target, torch_dtype, quantize, device_map, max_memory)
    common = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    with plan.explained(spec):
        return _load_spec(spec, target, common, plan, base=base, untuned=untuned)


def _load_spec(
    spec: str, target: torch.device, common: dict, plan: LoadPlan, *, base: str | None, untuned: bool
) -> LoadedModel:
    if spec == "default":
        adapter = shipped_adapter_path()
        if untuned or adapter is None:
            plain = _load_folder(ensure_default_converted(), DEFAULT_MODEL_NAME, target, common, plan)
            return _with_heads(plain, None)
        tuned = _load_folder(ensure_default_tuned(adapter), TUNED_MODEL_NAME, target, common, plan)
        return _with_heads(tuned, adapter)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(
            f"model '{spec}' not found: give 'default', a model folder, a .gguf file or an adapter folder"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"'{spec}' is a file but not a .gguf model; a Hugging Face model is a folder")
        return _with_heads(_load_gguf(path, target, common, plan), None)
    if (path / "adapter_config.json").is_file():
        from .adapter import load_adapter  # peft is only needed for adapters

        return _with_heads(load_adapter(path, base, target, common, plan), path)
    if (path / "config.json").is_file():
        plan.check_fits(path, str(path))
        return _with_heads(_load_folder(path, str(path), target, common, plan), path)
    raise ModelError(
        f"'{spec}' is not a model folder: expected config.json (Hugging Face) "
        "or adapter_config.json (LoRA adapter)"
    )


def calibrated_heads_path(key: str) -> Path:
    """Where `freqkv calibrate` keeps the head profile it measured for the model ``key`` names."""
    return freqkv_home() / "heads" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _with_heads(loaded: LoadedModel, folder: Path | None) -> LoadedModel:
    """Attach a retrieval-head profile: one the user calibrated first, else one shipped beside the
    weights (the default model's adapter folder holds the one measured for it)."""
    loaded.heads_key = f"{loaded.name}|{folder.resolve() if folder is not None else ''}"
    candidates = [calibrated_heads_path(loaded.heads_key)]
    if folder is not None:
        candidates.append(folder / PROFILE_FILE)
    config = loaded.model.config
    for path in candidates:
        if path.is_file():
            profile = HeadProfile.load(path)
            profile.check(config.num_hidden_layers, config.num_attention_heads, str(path))
            loaded.head_profile, loaded.head_profile_path = profile, path
            break
    return loaded


def quantize_loaded(loaded: LoadedModel, target: torch.device, plan: LoadPlan) -> LoadedModel:
    """``loaded`` (full precision, on the CPU) quantized in memory by ``plan``, tensor by tensor,
    then placed on ``target``: the base fine-tuning trains an adapter on (QLoRA), which then merges
    into the full weights as any adapter does. Needs the full-precision model in memory once, as an
    adapter's merge does."""
    model = plan.place(loaded.model, {"dtype": loaded.model.dtype})
    return dataclasses.replace(loaded, model=placed(model, target, plan))


def placed(model: PreTrainedModel, target: torch.device, plan: LoadPlan | None = None) -> PreTrainedModel:
    model.eval()
    model.requires_grad_(False)
    if plan is not None and not plan.plain:  # placed by from_pretrained; .to() would undo the map
        return plan.check_placed(model)
    return model.to(target)


def _from_pretrained(folder: Path, kwargs: dict) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except Exception as exc:  # any file in a model folder can be damaged: a pickle refused, a bad shard
        if is_out_of_memory(exc) or isinstance(exc, FreqKVError):
            raise
        raise ModelError(f"'{folder}' could not be loaded: {load_failure(exc)}") from None


def _load_folder(
    folder: Path, name: str, target: torch.device, common: dict, plan: LoadPlan | None = None
) -> LoadedModel:
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=common["trust_remote_code"])
    except Exception as exc:
        raise ModelError(f"'{folder}': config.json cannot be read: {one_line(exc)}") from None
    family = check_family(config, str(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=common["trust_remote_code"])
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise ModelError(
            f"'{folder}' has no usable tokenizer (tokenizer.json or tokenizer.model): {one_line(exc)}"
        ) from None
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)  # cut short, empty or garbage: say so, not SafetensorError
    if plan is None or plan.plain:
        model = _from_pretrained(folder, common)
    else:
        model = plan.load_kept(folder, lambda kept, kw: _from_pretrained(kept, {**common, **kw}))
        if model is None:
            model = _from_pretrained(folder, {**common, **plan.kwargs()})
            plan.keep(folder, model, tokenizer)
    return LoadedModel(placed(model, target, plan), tokenizer, name, family, read_settings(folder))


def _load_gguf(path: Path, target: torch.device, common: dict, plan: LoadPlan | None = None) -> LoadedModel:
    check_gguf(path)  # a file cut short, or only the magic bytes: one clear line, at once
    folder, file = path.parent, path.name
    kept = plan.kept_folder(path) if plan is not None and not plan.plain else None
    if kept is not None:  # a quantized copy kept: the GGUF is not read at all, its tokenizer neither
        config = AutoConfig.from_pretrained(kept)
        model = plan.load_from(kept, lambda copy, kw: _from_pretrained(copy, {**common, **kw}))
        tokenizer = AutoTokenizer.from_pretrained(kept)
        family = check_family(config, str(path))
        return LoadedModel(placed(model, target, plan), tokenizer, str(path), family, read_settings(folder))
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=file)
        family = check_family(config, str(path))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        # De-quantized on the CPU (transformers reads GGUF whole), then placed/quantized per tensor.
        on_cpu = common if plan is None or plan.plain else {**common, "device_map": {"": "cpu"}}
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, **on_cpu)
    except ModelError:
        raise
    except ImportError as exc:
        raise ModelError(
            f"reading GGUF files needs the 'gguf' package (pip install gguf): {one_line(exc)}"
        ) from None
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise ModelError(f"'{path}' could not be loaded as GGUF: {load_failure(exc)}") from None
    _forget_gguf_quantizer(model)
    if plan is not None and not plan.plain:
        model = plan.place(model, common)
        plan.keep(path, model, tokenizer)
    return LoadedModel(placed(model, target, plan), tokenizer, str(path), family, read_settings(folder))


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """transformers de-quantizes GGUF weights on load; drop the marker so the model can be saved."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


# -- the default model, converted once into FREQKV_HOME --------------------------------------------
def default_folder(tuned_adapter: Path | None = None) -> Path:
    """Where the converted default model (or its merge with ``tuned_adapter``) lives."""
    models = freqkv_home() / "models"
    if tuned_adapter is None:
        return models / DEFAULT_MODEL_NAME
    return models / f"{DEFAULT_MODEL_NAME}-freqkv-{adapter_digest(tuned_adapter)}"


def ensure_default_converted() -> Path:
    """Convert the embedded GGUF once into a safetensors folder (GGUF load ~50 s, folder ~2 s)."""
    folder = default_folder()
    if _usable(folder):
        return folder
    with _converting(folder):
        if _usable(folder, report=False):  # another process converted it while this one waited
            return folder
        gguf = default_gguf_path()
        loaded = _load_gguf(gguf, torch.device("cpu"), {"dtype": torch.float32, "trust_remote_code": False})
        _save_atomically(loaded.model, loaded.tokenizer, folder)
    return folder


def ensure_default_tuned(adapter: Path) -> Path:
    """Merge the shipped adapter into the embedded weights once; cached per adapter content.

    The plain weights come from their converted folder where an untuned run made one, else
    straight from the GGUF: a first run keeps one copy of the model (0.5 GB), not two."""
    from .adapter import merge_adapter

    folder = default_folder(adapter)
    if _usable(folder):
        return folder
    with _converting(folder):
        if _usable(folder, report=False):
            return folder
        cpu, cpu32 = torch.device("cpu"), {"dtype": torch.float32, "trust_remote_code": False}
        base = default_folder()
        if _usable(base, report=False):
            loaded = _load_folder(base, DEFAULT_MODEL_NAME, cpu, cpu32)
        else:
            loaded = _load_gguf(default_gguf_path(), cpu, cpu32)
        model = merge_adapter(loaded.model, adapter, read_settings(adapter))
        _save_atomically(model, loaded.tokenizer, folder, extra_files=(adapter / SETTINGS_FILE,))
    return folder


def default_tokenizer_source() -> tuple[Path, str | None]:
    """Where the embedded model's tokenizer is read from without converting anything: a converted
    folder (tuned or plain) if there is one, else the GGUF itself; (folder, gguf file name or None)."""
    for folder in _converted_defaults():
        with contextlib.suppress(ModelError):  # damaged in a read-only home: the next one will do
            if _usable(folder, report=False):
                return folder, None
    gguf = default_gguf_path()
    check_gguf(gguf)
    return gguf.parent, gguf.name


def _converted_defaults() -> list[Path]:
    """The folders a conversion of the default may be in: merged with the shipped adapter, plain."""
    try:
        adapter = shipped_adapter_path()
    except ModelError:  # a FREQKV_ADAPTER that is no adapter: the plain folder still has a tokenizer
        adapter = None
    return [default_folder(adapter), default_folder()] if adapter is not None else [default_folder()]


def check_home_writable(folder: Path | None = None) -> None:
    """Refuse at once, before a conversion of 40 s, a FREQKV_HOME where it could not be kept."""
    target = (folder or default_folder()).parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        raise ModelError(
            f"the default model is converted once into '{target}', which cannot be written "
            f"({one_line(exc)}): set FREQKV_HOME to a writable folder"
        ) from None


def _usable(folder: Path, *, report: bool = True) -> bool:
    """True when ``folder`` holds a complete conversion that is as it was written.

    A damaged one (cut short, overwritten: its checksums differ) is reported and rebuilt by the
    caller; one converted before checksums were recorded is checked by its headers, then adopted.
    """
    if not _is_converted(folder):
        return False
    if has_manifest(folder):
        problem = verify_manifest(folder)
    else:
        try:
            check_safetensors(folder / "model.safetensors")
            problem = None
        except ModelError as exc:
            problem = str(exc)
        if problem is None:
            with contextlib.suppress(OSError):
                write_manifest(folder)  # from now on checked as any other conversion
                share(folder)
    if problem is None:
        return True
    if not _writable(folder.parent):
        raise ModelError(
            f"the converted model in '{folder}' is damaged ({problem}) and this FREQKV_HOME is read-only: "
            f"delete '{folder}', or set FREQKV_HOME to a writable folder"
        )
    if report:
        log.warning("the converted model in '%s' is damaged (%s): converting it again", folder, problem)
    return False


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _converting(folder: Path) -> Iterator[None]:
    """Hold the lock of ``folder``'s conversion: processes that share a FREQKV_HOME (two terminals,
    two users) convert once, one after the other, and never remove what another one is loading."""
    from filelock import FileLock, Timeout

    check_home_writable(folder)
    locks = freqkv_home() / "locks"  # beside models/, which holds only models
    try:
        locks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot write '{locks}' ({one_line(exc)}): set FREQKV_HOME to a writable folder"
        ) from None
    lock = FileLock(str(locks / f"{folder.name}.lock"))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("waiting for another freqkv that is converting '%s' ...", folder.name)
            lock.acquire()
    except OSError as exc:
        raise ModelError(
            f"cannot lock '{folder.parent}' for the conversion ({one_line(exc)}): "
            "set FREQKV_HOME to a writable folder"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _save_atomically(
    model: PreTrainedModel, tokenizer: object, folder: Path, extra_files: tuple[Path, ...] = ()
) -> None:
    """Write the folder beside its place with checksums, then rename it there. Called under the
    folder's lock: an interrupted conversion never leaves half a folder, and a complete one that
    is in use is only ever replaced when it was found damaged."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    except OSError as exc:
        raise ModelError(
            f"cannot write the converted default model under '{folder.parent}' ({one_line(exc)}): "
            "set FREQKV_HOME to a writable folder"
        ) from None
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)  # type: ignore[attr-defined]
        for path in extra_files:
            shutil.copyfile(path, staging / path.name)
        write_manifest(staging)
        share(staging)  # mkdtemp makes 0700, safetensors 0600: other users could not read the cache
        if folder.exists():  # a damaged copy: out of the way first (a process still using it keeps it)
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{folder.name}-", dir=folder.parent))
            os.replace(folder, stale / folder.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            # A process that does not take the lock (an older freqkv sharing this FREQKV_HOME)
            # finished the same conversion first: use its copy.
            if not _usable(folder, report=False):
                raise
    except WRITE_ERRORS as exc:
        raise ModelError(
            f"cannot write the converted default model to '{folder}' ({write_failure(exc)}): "
            "free some space, or set FREQKV_HOME to another folder"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
