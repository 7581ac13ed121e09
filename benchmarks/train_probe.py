"""Training-path probe: speed and memory of `freqkv finetune`'s inner loop, and a GPU check
that the grouped training forward equals the streaming engine.

Uses a random model of SmolLM2-135M's shape (the figures do not depend on weight values)
and random tokens, so it needs no weights or data. Prints one line per measurement and
writes ``--out`` (JSON).

    python benchmarks/train_probe.py --out $OUT/train_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from freqkv_cli.cache.policy import CachePolicy  # noqa: E402
from freqkv_cli.engine.streaming import StreamingEngine  # noqa: E402
from freqkv_cli.models.loading import LoadedModel  # noqa: E402
from freqkv_cli.training import grouped_attention  # noqa: E402
from freqkv_cli.training.corpus import TokenCorpus  # noqa: E402
from freqkv_cli.training.finetune import FinetuneConfig, Finetuner  # noqa: E402

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
)  # fmt: skip


def build(device: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    model.eval().requires_grad_(False)
    return LoadedModel(model, None, "random-135M", "llama", None)


def check_equal(device: str, length: int, policy: CachePolicy) -> dict:
    """Loss of the grouped training forward vs the engine's streamed NLL, float32."""
    loaded = build(device)
    model = loaded.model
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (length,), generator=torch.Generator().manual_seed(1))
    engine = StreamingEngine(model, policy)
    nll_engine = engine.score(ids.tolist()).double()
    grouped_attention.register()
    model.set_attn_implementation(grouped_attention.ATTENTION_NAME)
    schedule = grouped_attention.GroupSchedule.build(policy, model.model.rotary_emb, length, device)
    with torch.no_grad():
        logits = (
            model(
                input_ids=ids[None].to(device),
                position_ids=schedule.positions[None],
                freqkv_schedule=schedule,
            )
            .logits[0, :-1]
            .float()
        )
    nll_grouped = -torch.log_softmax(logits, -1).gather(-1, ids[1:, None].to(device))[:, 0].double()
    diff = nll_engine - nll_grouped.cpu() if nll_engine.device.type == "cpu" else nll_engine - nll_grouped
    return {
        "length": length,
        "policy": policy.__dict__,
        "mean_nll_engine": float(nll_engine.mean()),
        "mean_nll_grouped": float(nll_grouped.mean()),
        "max_abs_token_diff": float(diff.abs().max()),
    }


def speed(
    device: str, *, seq_len: int, micro: int, batch: int, ckpt: bool, policy: CachePolicy, steps: int
) -> dict:
    loaded = build(device)
    loaded.model.float()
    corpus = TokenCorpus(torch.randint(0, SMOLLM2_135M["vocab_size"], (2_000_000,)), [])
    config = FinetuneConfig(
        policy=policy, seq_len=seq_len, steps=steps, batch=batch, micro_batch=micro,
        gradient_checkpointing=ckpt, save_every=10**9,
    )  # fmt: skip
    trainer = Finetuner(loaded, "random", config, corpus, Path("/tmp/probe-out"))
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    rates = []
    for _ in range(steps):
        started = time.perf_counter()
        report = trainer.train_step()
        rates.append(batch * seq_len / (time.perf_counter() - started))
        del report
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del trainer
    torch.cuda.empty_cache() if device == "cuda" else None
    return {
        "seq_len": seq_len, "micro_batch": micro, "batch": batch, "checkpointing": ckpt,
        "window": policy.window, "recent": policy.recent,
        "tokens_per_second_median": statistics.median(rates[1:]), "peak_gib": peak,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="train_probe.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    results: dict = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "checks": [],
        "speed": [],
    }
    for policy in (CachePolicy("freqkv", 1024, 4, 0, 0.5), CachePolicy("freqkv", 1024, 4, 128, 0.5)):
        results["checks"].append(check_equal(args.device, 4096, policy))
        print(json.dumps(results["checks"][-1]), flush=True)
    w1024 = CachePolicy("freqkv", 1024, 4, 0, 0.5)
    grid = [
        dict(seq_len=8192, micro=4, batch=8, ckpt=True, policy=w1024),
        dict(seq_len=8192, micro=8, batch=8, ckpt=True, policy=w1024),
        dict(seq_len=8192, micro=2, batch=8, ckpt=False, policy=w1024),
        dict(seq_len=8192, micro=4, batch=8, ckpt=True, policy=CachePolicy("freqkv", 2048, 4, 0, 0.5)),
    ]
    for setting in grid:
        try:
            row = speed(args.device, steps=args.steps, **setting)
        except torch.OutOfMemoryError:
            row = {**{k: v for k, v in setting.items() if k != "policy"}, "error": "out of memory"}
            torch.cuda.empty_cache()
        results["speed"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
