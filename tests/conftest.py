"""Tiny random models of every supported family, built in the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# Tiny models run 3-8x faster on one thread (measured here): thread start-up dominates their matmuls.
# Subprocess tests (the CLI, the embedded model) keep torch's default.
torch.set_num_threads(1)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
_CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def tiny_model(family: str = "llama", seed: int = 0, **overrides: object) -> torch.nn.Module:
    """2 layers, 4 query heads sharing 2 KV heads (GQA), head_dim 16, float32, eval mode."""
    config_cls, model_cls = _CLASSES[family]
    kwargs: dict = dict(
        vocab_size=211,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    if family in ("qwen3",):
        kwargs["head_dim"] = 16
    if family in ("mistral", "qwen2", "qwen3"):
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs))
    # Random init is small; larger weights make attention sharp, so errors cannot hide.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "proj" in name:
                param.mul_(4.0)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


# A document and a tiny model folder for the tests that run the commands.
DOC_TEXT = (Path(__file__).parent.parent / "samples" / "botchan.txt").read_text()[:3000]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random model folder with a byte tokenizer, as the CLI loads it."""
    from tinymodel import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    """The first 3,000 characters of Botchan as a text file."""
    path = tmp_path / "doc.txt"
    path.write_text(DOC_TEXT)
    return path


@pytest.fixture(autouse=True)
def _no_user_logs_or_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests (and the commands they start) neither log into the user's conversation log nor read
    the user's config file; the tests of those features set their own."""
    monkeypatch.setenv("FREQKV_NO_LOG", "1")
    empty = tmp_path_factory.mktemp("config") / "empty-config.toml"  # not in the test's tmp_path
    empty.write_text("")
    monkeypatch.setenv("FREQKV_CONFIG", str(empty))
