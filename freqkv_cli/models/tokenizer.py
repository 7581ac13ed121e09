"""Load only a tokenizer (for `freqkv count`): no weights, seconds not minutes."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError
from .integrity import check_gguf


def load_tokenizer(
    spec: str = "default", *, base: str | None = None, trust_remote_code: bool = False
) -> object:
    from transformers import AutoTokenizer  # `freqkv count --help` does without it

    from .loading import default_tokenizer_source

    path = Path(spec).expanduser()
    try:
        if spec == "default":  # counting needs no weights: no conversion for it
            folder, gguf_file = default_tokenizer_source()
            return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        if path.is_file() and path.suffix.lower() == ".gguf":
            check_gguf(path)  # a damaged file: one line (the reader would fail with struct.error)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if path.is_dir() and (path / "adapter_config.json").is_file():
            if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
                return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            base = base or json.loads((path / "adapter_config.json").read_text()).get(
                "base_model_name_or_path"
            )
            if not base:
                raise ModelError(f"adapter '{path}' does not name its base model: pass --base MODEL")
            return load_tokenizer(base, trust_remote_code=trust_remote_code)
        if path.is_dir() and (path / "config.json").is_file():
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ModelError:
        raise
    except Exception as exc:  # whatever a broken tokenizer file raises: one line, exit 4
        raise ModelError(f"'{spec}': no usable tokenizer: {str(exc).splitlines()[0][:200]}") from None
    raise ModelError(
        f"'{spec}' is not a model: give 'default', a model folder, a .gguf file or an adapter folder"
    )
