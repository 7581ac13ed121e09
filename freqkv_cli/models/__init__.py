"""Model loading: the embedded default, HF folders, GGUF files and LoRA adapters."""
