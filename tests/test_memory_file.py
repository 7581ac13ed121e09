"""The memory file (.fkv): round trip, every refusal, atomic writes, packed token ids."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from freqkv_cli.errors import EXIT_INPUT, EXIT_MODEL, InputError, ModelError, UsageError
from freqkv_cli.memory import file_format as ff
from freqkv_cli.memory.file_format import (
    FORMAT_VERSION,
    UNCHECKED,
    MemoryHeader,
    is_memory_file,
    load_memory,
    pack_ids,
    read_header,
    save_memory,
    unpack_ids,
)

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "botchan.txt"


def _header(**changes: object) -> MemoryHeader:
    header = MemoryHeader(
        model_fingerprint="model-abc123",
        adapter_fingerprint="adapter-9f",
        tokenizer_fingerprint="tok-77",
        policy={"window": 1024, "ratio": 0.5, "sinks": 4, "layers": [0, 1], "name": "freqkv"},
        tokens_read=123456,
        documents=[{"name": "book.pdf", "pages": 12, "sha256": "ab" * 32, "tokens": 123456}],
        dtype="bfloat16",
        extra={"position": 123456, "rounds": 3, "note": "é ✓"},
    )
    return dataclasses.replace(header, **changes)


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, 3.4e38])
    base = torch.randn(4, 6, generator=generator)
    return {
        "keys.0": torch.randn(1, 2, 16, 8, generator=generator),
        "values.0": torch.randn(1, 2, 16, 8, generator=generator).to(torch.bfloat16),
        "special": special,
        "counts": torch.randint(-(2**31), 2**31 - 1, (33,), dtype=torch.int32, generator=generator),
        "token_ids": pack_ids([5, 0, 49151, 300], 49152),
        "no_ids": pack_ids([], 49152),
        "transposed": base.t(),  # not contiguous
        "half_a": base[:2],  # two views of one storage (safetensors refuses shared storage)
        "half_b": base[2:],
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False, True]),
    }


def _bits(tensor: torch.Tensor) -> bytes:
    """Independent reference: the tensor's bytes through numpy (bfloat16 as its int16 bits)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def _saved(tmp_path: Path, name: str = "book.fkv") -> Path:
    path = tmp_path / name
    save_memory(path, _header(), _tensors())
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _refused(
    path: Path,
    error: type[Exception],
    *,
    expect_model: str | None = None,
    expect_tokenizer: str | None = None,
    **kwargs: object,
) -> str:
    """Load must refuse with `error` in one line naming the path, changing nothing on disk."""
    before = path.read_bytes() if path.is_file() else None
    listing = _listing(path.parent)
    with pytest.raises(error) as caught:
        load_memory(path, expect_model=expect_model, expect_tokenizer=expect_tokenizer, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and message
    assert str(path) in message
    assert (path.read_bytes() if path.is_file() else None) == before
    assert _listing(path.parent) == listing
    return message


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_keeps_every_byte_and_field(tmp_path: Path) -> None:
    tensors = _tensors()
    written = save_memory(tmp_path / "book.fkv", _header(), tensors)
    header, loaded = load_memory(
        tmp_path / "book.fkv", expect_model="model-abc123", expect_tokenizer="tok-77"
    )
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert _bits(loaded[name]) == _bits(tensor), name
        assert loaded[name].device.type == "cpu"
    assert header == written
    assert header.checksum.startswith("sha256:") and len(header.checksum) == len("sha256:") + 64
    assert dataclasses.replace(header, checksum="") == _header()  # every field as given (JSON-safe here)
    assert header.format_version == FORMAT_VERSION
    assert read_header(tmp_path / "book.fkv") == header
    assert unpack_ids(loaded["token_ids"]) == [5, 0, 49151, 300]


def test_header_goes_through_json(tmp_path: Path) -> None:
    save_memory(tmp_path / "m.fkv", _header(policy={"shape": (2, 3)}, adapter_fingerprint=None), {})
    header = read_header(tmp_path / "m.fkv")
    assert header.policy == {"shape": [2, 3]} and header.adapter_fingerprint is None
    with safe_open(tmp_path / "m.fkv", framework="pt") as handle:  # a plain safetensors file
        stored = json.loads(handle.metadata()["freqkv_memory"])
    assert stored["tokens_read"] == 123456 and stored["checksum"] == header.checksum


def test_checksum_depends_on_every_tensor_and_field() -> None:
    tensors = {name: t.contiguous() for name, t in _tensors().items() if name not in ("half_a", "half_b")}
    reference = ff.compute_checksum(_header(), tensors)
    assert ff.compute_checksum(_header(), dict(tensors)) == reference
    assert ff.compute_checksum(_header(checksum="sha256:whatever"), tensors) == reference
    assert ff.compute_checksum(_header(tokens_read=123457), tensors) != reference
    changed = dict(tensors, counts=tensors["counts"].clone())
    changed["counts"][-1] += 1
    assert ff.compute_checksum(_header(), changed) != reference
    # Same bytes under another dtype or shape are another memory.
    assert (
        ff.compute_checksum(_header(), dict(tensors, counts=tensors["counts"].view(torch.float32)))
        != reference
    )
    assert ff.compute_checksum(
        _header(), dict(tensors, keys=tensors["counts"].reshape(3, 11))
    ) != ff.compute_checksum(_header(), dict(tensors, keys=tensors["counts"].reshape(11, 3)))


def test_is_memory_file(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    assert is_memory_file(path)
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, plain, metadata={"other": "x"})
    text = tmp_path / "book.txt"
    text.write_bytes(SAMPLE.read_bytes()[:5000])
    (tmp_path / "empty.fkv").write_bytes(b"")
    for other in (plain, text, tmp_path / "empty.fkv", tmp_path / "missing.fkv", tmp_path):
        assert not is_memory_file(other), other


def test_loads_onto_the_device_asked_for(tmp_path: Path) -> None:
    # CUDA where there is one; elsewhere torch's "meta" device: no data, but the same move.
    device = "cuda" if torch.cuda.is_available() else "meta"
    path = _saved(tmp_path)
    _, loaded = load_memory(path, expect_model=None, expect_tokenizer=None, device=device)
    assert all(t.device.type == device for t in loaded.values())
    assert {name: t.shape for name, t in loaded.items()} == {name: t.shape for name, t in _tensors().items()}
    if device == "cuda":
        assert _bits(loaded["values.0"]) == _bits(_tensors()["values.0"])


# --- refusals --------------------------------------------------------------------------------


def test_errors_map_to_exit_codes() -> None:
    assert InputError.exit_code == EXIT_INPUT == 3
    assert ModelError.exit_code == EXIT_MODEL == 4


def test_refuses_missing_file_and_folder(tmp_path: Path) -> None:
    assert "no such" in _refused(tmp_path / "missing.fkv", InputError)
    with pytest.raises(InputError, match="folder"):
        load_memory(tmp_path, expect_model=None, expect_tokenizer=None)
    with pytest.raises(InputError, match="no such"):
        read_header(tmp_path / "missing.fkv")


@pytest.mark.parametrize("content", ["text", "empty", "random", "short", "json"])
def test_refuses_files_that_are_not_memories(tmp_path: Path, content: str) -> None:
    data = {
        "text": SAMPLE.read_bytes()[:20000],
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "short": b"\x05\x00",
        "json": b'{"__metadata__": {"freqkv_memory": "{}"}}',
    }[content]
    path = tmp_path / "doc.fkv"
    path.write_bytes(data)
    _refused(path, InputError)
    with pytest.raises(InputError):
        read_header(path)


def test_refuses_plain_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(3)}, path, metadata={"format": "pt"})
    assert "not a FreqKV memory" in _refused(path, InputError)
    save_file({"w": torch.ones(3)}, path)
    assert "not a FreqKV memory" in _refused(path, InputError)


def test_refuses_truncated_files_at_every_kind_of_point(tmp_path: Path) -> None:
    original = _saved(tmp_path).read_bytes()
    (header_length,) = struct.unpack("<Q", original[:8])
    data_start = 8 + header_length
    points = sorted(
        {1, 7, 8, 9, 40, data_start - 1, data_start, data_start + 1, (data_start + len(original)) // 2}
        | {len(original) - 1}
    )
    assert len(original) > data_start + 100
    for point in points:
        path = tmp_path / f"cut-{point}.fkv"
        path.write_bytes(original[:point])
        _refused(path, InputError)
        with pytest.raises(InputError):
            read_header(path)  # the cheap check sees the length too


def test_refuses_a_byte_appended(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes() + b"\x00")
    _refused(path, InputError)
    with pytest.raises(InputError, match="after its data"):
        read_header(path)  # seen from the header's offsets alone


def test_refuses_one_flipped_byte_in_tensor_data(tmp_path: Path) -> None:
    original = _saved(tmp_path).read_bytes()
    (header_length,) = struct.unpack("<Q", original[:8])
    data_start = 8 + header_length
    for position in (data_start, (data_start + len(original)) // 2, len(original) - 1):
        altered = bytearray(original)
        altered[position] ^= 0x01
        path = tmp_path / f"flip-{position}.fkv"
        path.write_bytes(bytes(altered))
        assert "checksum" in _refused(path, InputError)
        read_header(path)  # the cheap header read does not hash the data


def _contents(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(path, framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        return tensors, json.loads(handle.metadata()["freqkv_memory"])


def test_refuses_an_altered_header(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    original = path.read_bytes()
    # Edited in place, same length, still valid JSON: the number of tokens read changed by one.
    assert b"123456" in original
    path.write_bytes(original.replace(b"123456", b"123457"))
    assert "checksum" in _refused(path, InputError, expect_model="model-abc123")
    # Rewritten as valid safetensors by a tool that changed one thing.
    tensors, stored = _contents(_saved(tmp_path, "b.fkv"))
    cases = {
        "field": (tensors, {**stored, "policy": {**stored["policy"], "window": 2048}}, "checksum"),
        "missing": (tensors, {k: v for k, v in stored.items() if k != "dtype"}, "dtype"),
        "wrong-type": (tensors, {**stored, "tokens_read": "many"}, "tokens_read"),
        "added": ({**tensors, "extra": torch.ones(2)}, stored, "checksum"),
        "dropped": ({k: v for k, v in tensors.items() if k != "scalar"}, stored, "checksum"),
        "renamed": ({("K" if k == "keys.0" else k): v for k, v in tensors.items()}, stored, "checksum"),
    }
    for name, (changed, metadata, word) in cases.items():
        save_file(changed, tmp_path / f"{name}.fkv", metadata={"freqkv_memory": json.dumps(metadata)})
        assert word in _refused(tmp_path / f"{name}.fkv", InputError), name
    save_file(tensors, tmp_path / "garbled.fkv", metadata={"freqkv_memory": "{not json"})
    _refused(tmp_path / "garbled.fkv", InputError)
    save_file(tensors, tmp_path / "unchanged.fkv", metadata={"freqkv_memory": json.dumps(stored)})
    load_memory(tmp_path / "unchanged.fkv", expect_model=None, expect_tokenizer=None)  # the reference


def test_refuses_a_newer_format(tmp_path: Path) -> None:
    tensors = _tensors()
    prepared = ff._prepare(tensors)
    newer = dataclasses.asdict(_header(format_version=FORMAT_VERSION + 1))
    newer["checksum"] = ff.compute_checksum(newer, prepared)  # a valid file of a future version
    save_file(prepared, tmp_path / "new.fkv", metadata={"freqkv_memory": json.dumps(newer)})
    message = _refused(tmp_path / "new.fkv", InputError, expect_model="model-abc123")
    assert "newer" in message and str(FORMAT_VERSION + 1) in message
    with pytest.raises(InputError, match="newer"):
        read_header(tmp_path / "new.fkv")
    assert is_memory_file(tmp_path / "new.fkv")  # still recognised as a memory, so the user is told why
    for bad in (0, "1", True):
        newer["format_version"] = bad
        save_file(prepared, tmp_path / "bad.fkv", metadata={"freqkv_memory": json.dumps(newer)})
        _refused(tmp_path / "bad.fkv", InputError)


def test_refuses_another_model_tokenizer_or_adapter(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    message = _refused(path, ModelError, expect_model="model-other")
    assert "model-other" in message and "model-abc123" in message
    message = _refused(path, ModelError, expect_model="model-abc123", expect_tokenizer="tok-other")
    assert "tok-other" in message and "tok-77" in message
    message = _refused(path, ModelError, expect_model="model-abc123", expect_adapter="adapter-other")
    assert "adapter-other" in message and "adapter-9f" in message
    _refused(path, ModelError, expect_adapter=None)  # the file has an adapter, the model loaded has none
    load_memory(path, expect_model="model-abc123", expect_tokenizer="tok-77", expect_adapter="adapter-9f")
    load_memory(path, expect_model=None, expect_tokenizer=None, expect_adapter=UNCHECKED)


# --- atomic writes ---------------------------------------------------------------------------


def test_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved(tmp_path)
    before = path.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ff.os, "replace", fail)
    monkeypatch.setattr(ff, "_write", lambda handle, data: handle.write(data))
    with pytest.raises(UsageError, match="No space left") as caught:
        save_memory(path, _header(tokens_read=1), {"x": torch.ones(1000)})
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["book.fkv"]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_write_failing_midway_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: type[BaseException]
) -> None:
    path = _saved(tmp_path)
    before = path.read_bytes()

    def half_write(handle: BinaryIO, data: bytes) -> None:
        handle.write(data[: len(data) // 2])
        handle.flush()
        assert len(_listing(tmp_path)) == 2  # the temporary file is there, beside the old one
        raise failure("disk went away")

    monkeypatch.setattr(ff, "_write", half_write)
    with pytest.raises(failure):
        save_memory(path, _header(), _tensors())
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["book.fkv"]
    with pytest.raises(failure):
        save_memory(tmp_path / "new.fkv", _header(), _tensors())
    assert _listing(tmp_path) == ["book.fkv"]  # none rather than half a file


def test_bad_tensor_writes_nothing(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_memory(path, _header(), {"a": torch.ones(2), "b": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        save_memory(path, _header(), {"__metadata__": torch.ones(2)})
    assert path.read_bytes() == before and _listing(tmp_path) == ["book.fkv"]


def test_unwritable_places_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing"):
        save_memory(tmp_path / "missing" / "m.fkv", _header(), {})
    with pytest.raises(UsageError, match="folder"):
        save_memory(tmp_path, _header(), {})


def test_overwrite_replaces_and_new_file_honours_umask(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    save_memory(path, _header(tokens_read=5), {"x": torch.arange(3)})
    header, tensors = load_memory(path, expect_model=None, expect_tokenizer=None)
    assert header.tokens_read == 5 and list(tensors) == ["x"]
    umask = os.umask(0o022)
    os.umask(umask)
    save_memory(tmp_path / "fresh.fkv", _header(), {})
    assert (tmp_path / "fresh.fkv").stat().st_mode & 0o777 == 0o666 & ~umask


# --- token ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [2, 256, 49152, 65536, 65537, 128256, 151936, 2**31])
def test_pack_unpack_round_trip(tmp_path: Path, vocab_size: int) -> None:
    rng = np.random.default_rng(vocab_size)
    ids = [*rng.integers(0, vocab_size, 5000).tolist(), 0, vocab_size - 1]
    packed = pack_ids(ids, vocab_size)
    assert packed.dim() == 1 and packed.numel() == len(ids)
    assert packed.element_size() == (2 if vocab_size <= 65536 else 4)  # at most 4 bytes a token
    assert unpack_ids(packed) == ids
    assert unpack_ids(pack_ids(torch.tensor(ids), vocab_size)) == ids
    assert unpack_ids(pack_ids(np.array(ids), vocab_size)) == ids
    save_memory(tmp_path / "ids.fkv", _header(), {"token_ids": packed})
    _h, loaded = load_memory(tmp_path / "ids.fkv", expect_model=None, expect_tokenizer=None)
    assert unpack_ids(loaded["token_ids"]) == ids


def test_pack_refuses_ids_outside_the_vocabulary() -> None:
    assert unpack_ids(pack_ids([], 100)) == []
    for ids, vocab in (([100], 100), ([-1], 100), ([70000], 65536), ([2**31], 2**31)):
        with pytest.raises(ValueError):
            pack_ids(ids, vocab)
    for vocab in (0, 2**31 + 1):
        with pytest.raises(ValueError):
            pack_ids([0], vocab)
    with pytest.raises(ValueError):
        unpack_ids(torch.zeros(3, dtype=torch.float32))
