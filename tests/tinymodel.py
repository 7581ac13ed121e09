"""A tiny model folder the CLI can load: random weights + a byte-level tokenizer with a chat template."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte is a token (no merges): any text round-trips, vocab 256 + 2 specials."""
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"], "eos_token": "<|im_end|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(folder: Path, family: str = "llama", **overrides: object) -> Path:
    tokenizer = byte_tokenizer()
    model = tiny_model(family, vocab_size=len(tokenizer), max_position_embeddings=4096, **overrides)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_quantizable_model(folder: Path) -> Path:
    """A tiny model bitsandbytes quantizes as it does real ones: hidden 256 gives every linear layer
    many blocks of 64 weights."""
    return save_tiny_model(folder, hidden_size=256, intermediate_size=512)
