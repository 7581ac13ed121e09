"""One CPU streaming read, for comparing two checkouts: ``cd CHECKOUT && python
/path/to/cpu_prefill.py`` imports that checkout's freqkv_cli (the current directory).

A random SmolLM2-135M-shaped model (float32), 6,000 random token ids (or argv[1]) through a hybrid and a
FreqKV cache (window 1,024, recent 128), then 32 greedy tokens. Prints tokens/s; whole-process
CPU seconds are what a paired timing of two checkouts compares.
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from transformers import LlamaConfig, LlamaForCausalLM

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.engine.sampling import Sampler
from freqkv_cli.engine.streaming import StreamingEngine

config = LlamaConfig(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192,
    tie_word_embeddings=True,
)  # fmt: skip
torch.manual_seed(0)
model = LlamaForCausalLM(config).eval().requires_grad_(False)
TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 6000
ids = torch.randint(0, config.vocab_size, (TOKENS,), generator=torch.Generator().manual_seed(1)).tolist()
for kind in ("hybrid", "freqkv"):
    engine = StreamingEngine(model, CachePolicy(kind=kind, window=1024, sink=4, recent=128))
    started = time.perf_counter()
    engine.feed(ids)
    engine.generate(32, Sampler(), stop_token_ids=())
    print(f"{kind}: {len(ids) / (time.perf_counter() - started):.0f} tok/s (prefill and 32 decoded)")
