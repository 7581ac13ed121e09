"""finetune --quantize: LoRA trained on a quantized base (QLoRA), merged later like any adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinymodel import save_quantizable_model

from freqkv_cli.cli.app import run
from freqkv_cli.errors import EXIT_USAGE
from freqkv_cli.models.loading import load_model
from freqkv_cli.models.quantize import quantization_of
from freqkv_cli.models.settings import weights_fingerprint

SAMPLES = Path(__file__).parent.parent / "samples"
IDS = torch.randint(0, 250, (1, 200), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_quantizable_model(tmp_path_factory.mktemp("qlora") / "model")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))


def finetune(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--model", str(base), "--data", str(SAMPLES / "botchan.txt"), "--out", str(out),
        "--window", "48", "--recent", "8", "--seq-len", "160", "--steps", "4", "--batch", "2",
        "--lora-r", "4", "--lr", "1e-2", "--warmup", "1", "--quiet", "--json", *extra,
    ]  # fmt: skip


def losses(out: Path) -> list[float]:
    return json.loads((out / "training_log.json").read_text())["loss"]


def logits(loaded: object) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(IDS).logits.float()


def text_nll(loaded: object) -> float:
    """Mean next-token NLL on the first 160 tokens of the training text (one fixed batch)."""
    ids = loaded.tokenizer((SAMPLES / "botchan.txt").read_text()[:2000], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(loaded.model(ids[:, :160], labels=ids[:, :160]).loss)


def test_an_int4_base_trains_and_its_adapter_merges_into_the_full_weights(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    quantized, plain = tmp_path / "qlora", tmp_path / "lora"
    assert run(finetune(base, quantized, "--quantize", "int4")) == 0
    assert run(finetune(base, plain)) == 0
    capsys.readouterr()
    settings = json.loads((quantized / "freqkv.json").read_text())
    assert settings["training"]["quantize"] == "int4"
    assert json.loads((plain / "freqkv.json").read_text())["training"]["quantize"] is None
    # Named by the full-precision weights, as the adapter trained on them would be.
    full = load_model(str(base), device="cpu")
    assert settings["base_fingerprint"] == weights_fingerprint(full.model)
    # Step 1 scores the untouched base (LoRA starts at zero): NF4's rounding, not another model.
    first_quantized, first_plain = losses(quantized)[0], losses(plain)[0]
    assert 1e-4 < abs(first_quantized - first_plain) < 0.05 * first_plain
    tuned = load_model(str(quantized), device="cpu")  # merged into the full weights
    tuned_int4 = load_model(str(quantized), device="cpu", quantize="int4")
    base_int4 = load_model(str(base), device="cpu", quantize="int4")
    assert quantization_of(tuned.model) is None and quantization_of(tuned_int4.model) == "int4"
    # What it learned over the packed weights carries over, merged or merged and quantized again.
    assert text_nll(tuned) < text_nll(full) - 0.05
    assert text_nll(tuned_int4) < text_nll(base_int4) - 0.05
    assert torch.isfinite(logits(tuned_int4)).all()


def test_resuming_with_another_quantization_is_refused(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "qlora"
    assert run(finetune(base, out, "--quantize", "int4", "--max-minutes", "0.0001")) == 0
    capsys.readouterr()
    assert run(finetune(base, out, "--resume")) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "quantize int4 there, none here" in err, err
