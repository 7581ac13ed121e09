"""--device-map and --max-memory on the CPU: accelerate's dispatch (hooks, weights offloaded to disk)
gives exactly the plain run's results through the FreqKV engine; bad maps are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import cli, one_line_error
from tinymodel import save_tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cache.rounds import device_groups
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.errors import EXIT_USAGE, UsageError
from freqkv_cli.models.device_map import parse_max_memory, parse_placement
from freqkv_cli.models.loading import load_model
from freqkv_cli.models.quantize import weight_facts

LAYERS = 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("map") / "model", num_hidden_layers=LAYERS)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))


def write_map(path: Path, mapping: dict) -> str:
    path.write_text(json.dumps(mapping))
    return str(path)


def pieces_map(tmp_path: Path) -> str:
    """Layer 1 and lm_head offloaded to disk (meta tensors, loaded by hooks at each call)."""
    mapping = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "disk"}
    mapping.update({f"model.layers.{i}": ("disk" if i == 1 else "cpu") for i in range(LAYERS)})
    return write_map(tmp_path / "map.json", mapping)


def run(loaded: object, kind: str, ids: list[int]) -> tuple[torch.Tensor, list[int], int]:
    engine = StreamingEngine(loaded.model, CachePolicy(kind, window=96), tokenizer=loaded.tokenizer)
    nll = engine.score(ids)
    tokens = engine.generate(max_new_tokens=12).token_ids
    return nll, tokens, engine.stats().compressions


@pytest.mark.parametrize("kind", ["freqkv", "hybrid", "sink"])
def test_dispatched_equals_plain_across_rounds(folder: Path, tmp_path: Path, kind: str) -> None:
    ids = torch.randint(0, 250, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    plain = load_model(str(folder), device="cpu")
    spread = load_model(str(folder), device="cpu", device_map=pieces_map(tmp_path))
    assert hasattr(spread.model.model.layers[1], "_hf_hook")
    assert spread.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    want, want_tokens, rounds = run(plain, kind, ids)
    got, got_tokens, _ = run(spread, kind, ids)
    assert rounds >= 4
    # The same float32 arithmetic on the same device: hooks only bring the weights in.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got_tokens == want_tokens


def test_auto_with_a_cpu_cap_offloads_and_equals_plain(folder: Path) -> None:
    ids = torch.randint(0, 250, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    plain = load_model(str(folder), device="cpu")
    spread = load_model(str(folder), device="cpu", device_map="auto", max_memory="cpu=400KB")
    facts = weight_facts(spread.model)
    assert facts["device_map"] and "disk" in facts["device_map"].values()
    assert facts["weight_bytes_by_device"]["disk"] > 0
    want, _, _ = run(plain, "freqkv", ids)
    got, _, _ = run(spread, "freqkv", ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_cap_that_leaves_the_embedding_on_disk_is_refused(folder: Path) -> None:
    with pytest.raises(UsageError, match="no device room for the embedding"):
        load_model(str(folder), device="cpu", device_map="auto", max_memory="cpu=150KB")


def test_rounds_never_stack_layers_of_two_devices() -> None:
    class Layer:
        def __init__(self, device: str) -> None:
            self.keys = torch.empty(0, device=device)

    layers = [Layer("cpu"), Layer("cpu"), Layer("meta"), Layer("meta"), Layer("meta"), Layer("cpu")]
    parts = device_groups(layers, 2)
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    assert all(len({layer.keys.device for layer in part}) == 1 for part in parts)


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ({"model.layers.0": "gpu"}, "is not a device"),
        ({"model.layers.0": 7}, "this machine has"),
        ({"model.embed_tokens": "disk"}, "cannot be on disk"),
        ([1, 2], "must hold a JSON object"),
        ({"lm_head": True}, "is not a device"),
    ],
)
def test_bad_map_files_are_refused(tmp_path: Path, mapping: object, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_placement(write_map(tmp_path / "bad.json", mapping), None)


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_placement(str(tmp_path / "broken.json"), None)
    with pytest.raises(UsageError, match="neither one of auto"):
        parse_placement(str(tmp_path / "missing.json"), None)
    with pytest.raises(UsageError, match="give `device_map` too"):
        parse_placement(None, "cpu=1GiB")
    with pytest.raises(UsageError, match="DEVICE=SIZE"):
        parse_max_memory("cpu:20GiB")
    assert parse_max_memory("cpu=1.5GiB, cpu=2MB") == {"cpu": 2_000_000}


def test_cli_refuses_a_bad_map_in_one_line(folder: Path, tmp_path: Path) -> None:
    bad = write_map(tmp_path / "bad.json", {"model.layers.0": "tpu"})
    result = cli("info", "--model", str(folder), "--device", "cpu", "--device-map", bad)
    assert result.returncode == EXIT_USAGE
    assert "tpu" in one_line_error(result.stderr.decode())


def test_info_shows_weights_by_device(folder: Path, tmp_path: Path) -> None:
    result = cli("info", "--model", str(folder), "--device", "cpu", "--device-map", pieces_map(tmp_path))
    assert result.returncode == 0, result.stderr.decode()
    weights = next(line for line in result.stdout.decode().splitlines() if line.startswith("weights"))
    assert "not quantized" in weights and "cpu" in weights and "disk" in weights


def test_a_restored_cache_puts_each_layer_on_the_device_it_is_given() -> None:
    """A saved memory loaded into a spread model: every layer's entries go to its own layer's
    device (here all CPU devices, told apart by identity of the list passed through)."""
    from conftest import tiny_model

    model = tiny_model("llama")
    engine = StreamingEngine(model, CachePolicy(kind="freqkv", window=24, sink=4))
    engine.feed(list(range(1, 60)))
    saved = engine.state()
    asked: list = []
    restore = engine.cache.load_state

    def spy(state, device, dtype, layer_devices=None):
        asked.append(layer_devices)
        return restore(state, device, dtype, layer_devices)

    engine.cache.load_state = spy
    engine.load_state(saved)
    want = [layer.self_attn.k_proj.weight.device for layer in model.model.layers]
    assert asked == [want]
    for index in range(model.config.num_hidden_layers):
        keys, _ = engine.cache.entries(index)
        assert keys.device == want[index]
        torch.testing.assert_close(keys, saved.tensors[f"cache.layer.{index}.keys"])
