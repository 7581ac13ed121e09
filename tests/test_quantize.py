"""--quantize int8|int4 on the CPU (bitsandbytes runs there): a quantized tiny model reads through the
FreqKV engine and the hybrid, close to the unquantized model; the pre-quantized copy is kept as
safetensors and used by the next load; combinations that cannot work are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import cli, one_line_error
from tinymodel import save_quantizable_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.errors import EXIT_USAGE, UsageError
from freqkv_cli.models import placing
from freqkv_cli.models.loading import load_model
from freqkv_cli.models.placing import LoadPlan
from freqkv_cli.models.quantize import weight_facts
from freqkv_cli.models.settings import weights_fingerprint

IDS = torch.randint(0, 250, (600,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_quantizable_model(tmp_path_factory.mktemp("quant") / "model")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def nll(loaded: object, kind: str, window: int = 128) -> tuple[torch.Tensor, int]:
    engine = StreamingEngine(loaded.model, CachePolicy(kind, window=window), tokenizer=loaded.tokenizer)
    return engine.score(IDS), engine.stats().compressions


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_a_quantized_model_reads_through_the_engine_as_its_own_forward(folder: Path, bits: str) -> None:
    loaded = load_model(str(folder), device="cpu", quantize=bits)
    facts = weight_facts(loaded.model)
    assert facts["quantization"] == bits
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ in ("Linear8bitLt", "Linear4bit")
    streamed, _ = nll(loaded, "full")
    with torch.no_grad():
        logits = loaded.model(torch.tensor([IDS])).logits[0, :-1].float()
    forward = -torch.log_softmax(logits, -1).gather(-1, torch.tensor(IDS[1:])[:, None])[:, 0]
    # Not bit for bit as in float32: LLM.int8 picks its outlier columns per forward call (chunks
    # differ from one whole forward), and bitsandbytes' CPU int4 kernel computes single rows in
    # bf16 (relative step 2^-8). Measured here: 0.013 (int8) and 0.003 (int4) at most.
    torch.testing.assert_close(streamed, forward, rtol=0, atol=3e-2)


@pytest.mark.parametrize(
    ("bits", "kind", "bound"),
    [("int8", "freqkv", 0.01), ("int8", "hybrid", 0.03), ("int4", "freqkv", 0.1), ("int4", "hybrid", 0.1)],
)
def test_quantized_nll_is_close_to_the_unquantized_across_rounds(
    folder: Path, bits: str, bound: float, kind: str
) -> None:
    plain, rounds = nll(load_model(str(folder), device="cpu"), kind)
    quantized, _ = nll(load_model(str(folder), device="cpu", quantize=bits), kind)
    assert rounds >= 4
    # Mean |NLL change| per token against the mean NLL. Measured on this model: int8 0.0016 with
    # freqkv, 0.011 with the hybrid (its exact spans are chosen by key norm here: a small change of
    # the keys flips some choices, and a flipped span changes its tokens' NLL by more than the
    # weights' rounding does); int4 0.02-0.04 (NF4 has 16 levels a block: about 10% relative
    # error per weight, where int8's per-row absmax gives under 1%). The bounds leave 2.5-6x room
    # and catch a broken kernel (its NLL moves by whole nats) or rounds that amplify the error.
    change = (quantized - plain).abs().mean() / plain.mean()
    assert float(change) < bound


def test_the_quantized_copy_is_kept_and_used_by_the_next_load(
    folder: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_model(str(folder), device="cpu", quantize="int4")
    kept = list((home / "quantized").iterdir())
    assert len(kept) == 1
    names = {p.name for p in kept[0].iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pkl"))}  # no pickle

    def no_quantizing(*args: object) -> None:
        raise AssertionError("the kept copy should have been used")

    monkeypatch.setattr(placing, "save_prequantized", no_quantizing)
    again = load_model(str(folder), device="cpu", quantize="int4")
    assert weight_facts(again.model)["quantization"] == "int4"
    torch.testing.assert_close(nll(again, "freqkv")[0], nll(first, "freqkv")[0], rtol=0, atol=0)


def test_a_damaged_copy_is_quantized_again(
    folder: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_model(str(folder), device="cpu", quantize="int8")
    weights = next((home / "quantized").iterdir()) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)
    weights.write_bytes(bytes(data))
    loaded = load_model(str(folder), device="cpu", quantize="int8")
    assert "damaged" in caplog.text
    assert weight_facts(loaded.model)["quantization"] == "int8"
    caplog.clear()
    load_model(str(folder), device="cpu", quantize="int8")  # from the rebuilt copy
    assert "damaged" not in caplog.text
    assert [p.name for p in (home / "quantized").iterdir()] == [weights.parent.name]


def test_quantized_weights_are_smaller_and_fingerprinted_apart(folder: Path) -> None:
    plain = load_model(str(folder), device="cpu")
    int8 = load_model(str(folder), device="cpu", quantize="int8")
    int4 = load_model(str(folder), device="cpu", quantize="int4")
    sizes = [weight_facts(m.model)["weight_bytes"] for m in (plain, int8, int4)]
    # From the unquantized model: its float32 linear weights (lm_head excepted) become int8 plus a
    # float32 scale a row, or NF4 (two a byte) plus a float32 absmax a block of 64 and a 16-entry
    # float32 code a layer.
    linears = [m for n, m in plain.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    weights = sum(m.weight.numel() for m in linears)
    rows = sum(m.weight.shape[0] for m in linears)
    unquantized = sizes[0] - 4 * weights
    assert sizes[1] == unquantized + weights + 4 * rows
    assert sizes[2] == unquantized + weights // 2 + 4 * (weights // 64) + 4 * 16 * len(linears)
    # A memory file names the weights that computed its keys and values: other weights, other model.
    prints = {weights_fingerprint(m.model) for m in (plain, int8, int4)}
    assert len(prints) == 3
    assert weights_fingerprint(load_model(str(folder), device="cpu", quantize="int4").model) in prints


def test_unsupported_combinations_are_refused() -> None:
    with pytest.raises(UsageError, match="not supported on mps"):
        LoadPlan.make(torch.device("mps"), torch.float32, quantize="int4")
    with pytest.raises(UsageError, match="not one of int8, int4"):
        LoadPlan.make(torch.device("cpu"), torch.float32, quantize="int3")
    with pytest.raises(UsageError, match="16 bits on CUDA"):
        LoadPlan.make(torch.device("cuda"), torch.float32, quantize="int8")


def test_running_out_of_memory_while_loading_says_what_would_fit(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freqkv_cli.errors import OutOfMemoryError
    from freqkv_cli.models import loading

    def out_of_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loading, "_from_pretrained", out_of_memory)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU to spread over
    with pytest.raises(OutOfMemoryError) as raised:
        load_model(str(folder), device="cpu")
    message = str(raised.value)
    assert all(hint in message for hint in ("--quantize int4", "int8", "--device-map auto", "--window"))
    with pytest.raises(OutOfMemoryError) as raised:
        load_model(str(folder), device="cpu", quantize="int4", device_map="auto")
    assert "--quantize" not in str(raised.value) and "--device-map" not in str(raised.value)

    # Weights alone larger than the GPU's free memory: a smaller window would not help.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 2000))
    with pytest.raises(OutOfMemoryError) as raised:
        LoadPlan.make(torch.device("cuda"), torch.bfloat16).check_fits(folder, "big")
    assert "--quantize int4" in str(raised.value) and "--window" not in str(raised.value)


def test_cli_refusals_are_one_line(folder: Path, tmp_path: Path) -> None:
    result = cli("info", "--model", str(folder), "--device", "cpu", "--quantize", "int2")
    assert result.returncode == EXIT_USAGE
    assert "int2" in one_line_error(result.stderr.decode())
    text = tmp_path / "train.txt"
    text.write_text("some words to train on. " * 400)
    result = cli(
        "finetune", "--model", str(folder), "--device", "cpu", "--quantize", "int3",
        "--data", str(text), "--out", str(tmp_path / "adapter"), "--steps", "1", "--seq-len", "256",
        "--window", "128",
    )  # fmt: skip
    # finetune trains on a quantized base (tests/test_qlora.py): a bad kind is refused before loading.
    assert result.returncode == EXIT_USAGE, result.stderr.decode()
    assert "int3" in one_line_error(result.stderr.decode())
    assert not (tmp_path / "adapter").exists()


def test_info_reports_weights_quantization_and_map(folder: Path) -> None:
    import json

    result = cli("info", "--model", str(folder), "--device", "cpu", "--quantize", "int4", "--json")
    assert result.returncode == 0, result.stderr.decode()
    data = json.loads(result.stdout)
    assert data["quantization"] == "int4"
    plain = load_model(str(folder), device="cpu").model
    # Two 4-bit weights a byte are still two parameters; the bytes held include NF4's scales.
    assert data["parameters"] == sum(p.numel() for p in plain.parameters())
    int4 = load_model(str(folder), device="cpu", quantize="int4")
    assert data["weight_bytes"] == weight_facts(int4.model)["weight_bytes"]  # checked in bytes above
    assert data["weight_bytes_by_device"] == {"cpu": data["weight_bytes"]}


def test_a_superseded_copy_is_removed_once_no_model_read_from_it_lives(
    folder: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from freqkv_cli.models import quantize

    copies = home / "quantized"
    load_model(str(folder), device="cpu", quantize="int8")
    load_model(str(folder), device="cpu", quantize="int4")
    (int8,) = (p for p in copies.iterdir() if "-int8-" in p.name)
    (first,) = (p for p in copies.iterdir() if "-int4-" in p.name)
    # Copies named without an identity: one of this source under an earlier recipe, one of another
    # source with the same folder name.
    digest = quantize._digest(folder, quantize.Quantization("int4"), "nf4-b64,int8-t1.0", "torch.float32")
    unnamed = copies / f"{folder.stem}-int4-{digest}"
    other = copies / f"{folder.stem}-int4-{'0' * 16}"
    for path in (unnamed, other):
        path.mkdir()
        (path / "config.json").write_text("{}")
    in_use = load_model(str(folder), device="cpu", quantize="int4")  # read from the first copy

    monkeypatch.setattr(quantize, "RECIPE", quantize.RECIPE + "-next")
    load_model(str(folder), device="cpu", quantize="int4")
    assert {p.name for p in copies.iterdir()} >= {first.name, int8.name, other.name}
    assert not unnamed.exists()
    second = quantize.prequantized_folder(folder, quantize.Quantization("int4"), "torch.float32")
    assert second.is_dir() and second != first

    del in_use
    gc.collect()
    again = load_model(str(folder), device="cpu", quantize="int4")  # from the second copy
    assert {p.name for p in copies.iterdir()} == {second.name, int8.name, other.name}
    assert weight_facts(again.model)["quantization"] == "int4"


@pytest.mark.slow
def test_a_gguf_with_quantize_stays_small_and_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from freqkv_cli.models import loading
    from freqkv_cli.models.default import default_gguf_path

    gguf = str(default_gguf_path())
    first = load_model(gguf, device="cpu", quantize="int4")
    facts = weight_facts(first.model)
    assert facts["quantization"] == "int4"
    assert facts["weight_bytes"] < 200e6  # 538 MB as float32; the tied embedding stays float32

    calls: list[dict] = []
    real = loading.AutoModelForCausalLM.from_pretrained

    def recorded(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", recorded)
    again = load_model(gguf, device="cpu", quantize="int4")
    assert calls and not any("gguf_file" in kw for kw in calls)  # read from the kept copy alone
    assert weight_facts(again.model)["weight_bytes"] == facts["weight_bytes"]


def test_a_memory_read_by_a_quantized_model_is_its_own(folder: Path, tmp_path: Path) -> None:
    from freqkv_cli.cache.policy import CacheSettings
    from freqkv_cli.documents import open_document
    from freqkv_cli.errors import FreqKVError
    from freqkv_cli.memory.saved import load_session, save_session
    from freqkv_cli.session.session import Session

    text = tmp_path / "doc.txt"
    text.write_text("The pass key is 71423. Remember it. " * 40)
    int4 = load_model(str(folder), device="cpu", quantize="int4")
    session = Session(int4, int4.cache_policy(CacheSettings(kind="hybrid", window=128)))
    session.read_document(open_document(str(text)), task="read", finish=False, on_progress=lambda p: None)
    save_session(session, str(tmp_path / "m.fkv"))
    later = load_session(load_model(str(folder), device="cpu", quantize="int4"), str(tmp_path / "m.fkv"))
    assert later.session.stats().tokens_seen == session.stats().tokens_seen
    with pytest.raises(FreqKVError, match="model"):
        load_session(load_model(str(folder), device="cpu"), str(tmp_path / "m.fkv"))


def test_the_weight_estimate_before_loading_matches_the_loaded_weights(folder: Path) -> None:
    from freqkv_cli.models.placing import estimated_weight_bytes
    from freqkv_cli.models.quantize import Quantization

    plain = weight_facts(load_model(str(folder), device="cpu").model)["weight_bytes"]
    int4 = weight_facts(load_model(str(folder), device="cpu", quantize="int4").model)["weight_bytes"]
    # Only the norms and rotary buffers are left out of the estimate (0.1% here).
    assert estimated_weight_bytes(folder, 4, None) == pytest.approx(plain, rel=0.002)
    assert estimated_weight_bytes(folder, 4, Quantization("int4")) == pytest.approx(int4, rel=0.1)
