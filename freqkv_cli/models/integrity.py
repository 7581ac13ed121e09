"""Is a model file whole? Cheap checks before the slow loads, and checksums of converted models.

* :func:`check_gguf` parses a GGUF header (metadata and tensor table, no weights) and checks that
  the file holds every tensor it lists: a download cut short, or a file with only the magic
  bytes, is a one-line ModelError instead of a struct or numpy error from deep in transformers.
* :func:`check_safetensors` does the same for ``*.safetensors`` (8-byte length, JSON header,
  data extents against the file size).
* :func:`write_manifest` records, when a model is converted, each file's size, SHA-256, mtime
  and a digest of 16 sampled blocks; :func:`verify_manifest` checks them on every load: sizes
  and the sampled blocks always (about 1 ms for the 540 MB default model), the full SHA-256
  (about 0.35 s) only when a file's mtime is not the recorded one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

MANIFEST_FILE = "freqkv-manifest.json"
_SAMPLE_BLOCKS = 16
_SAMPLE_BYTES = 64 * 1024
_HASH_CHUNK = 4 * 1024 * 1024

# GGUF value types (gguf/constants.py GGUFValueType) -> struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass
class GGUFInfo:
    architecture: str | None
    context_length: int | None
    tensors: int


class _Cut(Exception):
    """The header ends before its own fields do."""


class _Header:
    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise _Cut
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return values

    def string(self) -> str:
        (length,) = self.take("Q")
        if self.at + length > len(self.data):
            raise _Cut
        raw = bytes(self.data[self.at : self.at + length])
        self.at += length
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> object:
        if kind in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[kind])[0]
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY:
            item, count = self.take("IQ")
            if item in _GGUF_SCALARS:  # skip the items without reading them one by one
                size = struct.calcsize("<" + _GGUF_SCALARS[item]) * count
                if self.at + size > len(self.data):
                    raise _Cut
                self.at += size
                return None
            for _ in range(count):
                self.value(item)
            return None
        raise ValueError(f"unknown metadata value type {kind}")


def check_gguf(path: Path) -> GGUFInfo:
    """Parse ``path``'s GGUF header and check that its tensors fit in the file; ModelError if not.

    Reads the header only (a few MB for a vocabulary of 50k tokens; ~0.1 s), never the weights.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelError(f"'{path}' is empty, not a GGUF model; download it again")
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_gguf(path, data, size)
    except OSError as exc:
        raise ModelError(f"'{path}' cannot be read: {exc.strerror or exc}") from None


def _parse_gguf(path: Path, data: mmap.mmap, size: int) -> GGUFInfo:
    if data[:4] != b"GGUF":
        raise ModelError(f"'{path}' is not a GGUF file (no GGUF magic bytes); check that it is a model")
    header = _Header(data)
    header.at = 4
    damaged = f"'{path}' is a damaged GGUF file"
    try:
        (version,) = header.take("I")
        if version not in (2, 3):
            raise ModelError(f"'{path}': GGUF version {version} is not supported (2 and 3 are)")
        tensors, entries = header.take("QQ")
        metadata: dict[str, object] = {}
        for _ in range(entries):
            key = header.string()
            (kind,) = header.take("I")
            metadata[key] = header.value(kind)
        table = []
        for _ in range(tensors):
            header.string()
            (dims,) = header.take("I")
            shape = header.take("Q" * dims) if dims else ()
            ggml_type, offset = header.take("IQ")
            table.append((shape, ggml_type, offset))
    except _Cut:
        raise ModelError(
            f"{damaged}: cut short inside its header ({size:,} bytes); download it again"
        ) from None
    except ValueError as exc:
        raise ModelError(f"{damaged}: {exc}; download it again") from None
    alignment = metadata.get("general.alignment")
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    start = -(-header.at // alignment) * alignment
    needed = start + max((offset + _tensor_bytes(shape, kind) for shape, kind, offset in table), default=0)
    if needed > size:
        raise ModelError(
            f"{damaged}: cut short, {size:,} of the {needed:,} bytes its tensors need; download it again"
        )
    architecture = metadata.get("general.architecture")
    context = metadata.get(f"{architecture}.context_length") if isinstance(architecture, str) else None
    return GGUFInfo(
        architecture if isinstance(architecture, str) else None,
        context if isinstance(context, int) else None,
        len(table),
    )


def _tensor_bytes(shape: tuple, ggml_type: int) -> int:
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ImportError, ValueError, KeyError):
        return 0  # a type this gguf package does not know: leave it to the loader
    count = 1
    for dim in shape:
        count *= dim
    return count // block * type_size


def check_safetensors(path: Path) -> None:
    """Check a ``.safetensors`` file's header and that its tensors fit in the file; ModelError if not."""
    damaged = f"'{path}' is damaged"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ModelError(f"{damaged}: {size} bytes, not a safetensors file (cut short or empty)")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 * 1024 * 1024):
                raise ModelError(f"{damaged}: not a safetensors file, or cut short inside its header")
            text = handle.read(length)
    except OSError as exc:
        raise ModelError(f"'{path}' cannot be read: {exc.strerror or exc}") from None
    try:
        header = json.loads(text)
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ModelError(f"{damaged}: its header is not valid safetensors JSON") from None
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise ModelError(f"{damaged}: cut short, {size:,} of {needed:,} bytes")


# -- checksums of converted models --------------------------------------------------------------
def _sample_digest(path: Path, size: int) -> str:
    """SHA-256 of 16 blocks of 64 KiB spread over the file (the first and the last included)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for index in range(_SAMPLE_BLOCKS):
            handle.seek(max(0, (size - _SAMPLE_BYTES) * index // (_SAMPLE_BLOCKS - 1)))
            hasher.update(handle.read(_SAMPLE_BYTES))
    return hasher.hexdigest()


def _full_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size, SHA-256, mtime and sampled digest of every file in ``folder``."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST_FILE:
            info = path.stat()
            files[path.name] = {
                "size": info.st_size,
                "sha256": _full_digest(path),
                "sample": _sample_digest(path, info.st_size),
                "mtime_ns": info.st_mtime_ns,
            }
    _write_json(folder / MANIFEST_FILE, {"format": 1, "files": files})


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


def verify_manifest(folder: Path) -> str | None:
    """None when every file recorded in ``folder``'s manifest is as it was written, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            return f"{MANIFEST_FILE} lists no files"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} cannot be read"
    refreshed = False
    for name, entry in files.items():
        path = folder / name
        try:
            info = path.stat()
            if info.st_size != entry["size"]:
                return f"{name} is {info.st_size:,} bytes, {entry['size']:,} were written (cut short?)"
            if _sample_digest(path, info.st_size) != entry["sample"]:
                return f"{name} has changed since it was written (its checksum differs)"
            if info.st_mtime_ns != entry["mtime_ns"]:
                # Written to since (or copied without its times): only the whole file can tell.
                if _full_digest(path) != entry["sha256"]:
                    return f"{name} has changed since it was written (its checksum differs)"
                entry["mtime_ns"], refreshed = info.st_mtime_ns, True
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, KeyError, TypeError) as exc:
            return f"{name} cannot be checked ({exc})"
    if refreshed:  # the next load is cheap again; a read-only cache just checks in full each time
        with contextlib.suppress(OSError):
            _write_json(folder / MANIFEST_FILE, manifest)
    return None


def _write_json(path: Path, data: dict) -> None:
    """Write beside and rename, so that a reader never sees half a file."""
    handle, staging = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=1)
            out.write("\n")
        os.chmod(staging, 0o666 & ~current_umask())
        os.replace(staging, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)


def current_umask() -> int:
    """The process's umask: read from /proc where it can be (setting it to read it is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(folder: Path) -> None:
    """Give ``folder`` and its files the permissions the umask allows (mkdtemp and some writers
    use 0700/0600), so that other users of a shared FREQKV_HOME can read a converted model."""
    mask = current_umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def load_failure(exc: BaseException) -> str:
    """One line on why a model file did not load; a refused pickle says why it was refused (and
    not torch's advice to load it with weights_only=False, which could run the code it holds)."""
    import pickle

    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (
            "it is a pickle (.bin) holding more than tensors, refused because loading it could run "
            "code; use a .safetensors copy of these weights"
        )
    lines = text.splitlines()
    return lines[0][:300] if lines else type(exc).__name__
