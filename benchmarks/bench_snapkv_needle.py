"""The selection-only peer for the hybrid cache: kvpress's SnapKV on the same needle prompts.

Builds exactly the documents, keys and qa prompt of `freqkv eval needle` (same seeds), runs
the whole prompt (instruction, question, document, the question again, the assistant cue)
through the model once with ``kvpress.SnapKVPress`` compressing every layer's cache to
``--budget`` entries (the freqkv window, so all policies hold the same memory), then decodes
greedily from the compressed cache. SnapKV scores with the attention of the prompt's last 64
tokens, which hold the question: it is query-aware, and it sees the whole document at once
(not streamed), an advantage over any streaming policy. The first answer token comes from
the uncompressed prefill, as in SnapKV.

kvpress 0.5.5 pins transformers < 5.3 and imports ``datasets`` and ``fire`` for presses not
used here; this script stubs both and passes ``cache_position`` explicitly (newer
transformers no longer hand it to attention hooks). Writes eval-needle-shaped JSON.

    python benchmarks/bench_snapkv_needle.py --lengths 2048 4096 --seeds 5 --out snapkv.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

for _unused in ("datasets", "fire"):  # imported by kvpress presses this script does not use
    sys.modules.setdefault(_unused, types.ModuleType(_unused))
sys.modules["datasets"].load_dataset = None  # type: ignore[attr-defined]
from kvpress import SnapKVPress  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from freqkv_cli.cache.policy import CachePolicy  # noqa: E402
from freqkv_cli.evaluation import needle as needle_lib  # noqa: E402
from freqkv_cli.models.loading import load_model  # noqa: E402
from freqkv_cli.session.prompts import document_prompt  # noqa: E402
from freqkv_cli.session.session import Session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=1024, help="cache entries kept per layer (the window)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    loaded = load_model("default")
    model, tok = loaded.model, loaded.tokenizer
    device = model.device

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    session = Session(loaded, CachePolicy("freqkv", window=args.budget))
    overhead = needle_lib.prompt_overhead(session)
    before, after = document_prompt("qa", needle_lib.QUESTION)
    template = session.template
    stops = set(session.stop_token_ids)
    trials = []
    started = time.perf_counter()
    for length in args.lengths:
        for depth in args.depths:
            for seed in range(args.seeds):
                key = needle_lib.make_key(seed, length, depth)
                document = needle_lib.build_document(
                    encode, tok.decode, needle_lib.default_haystack(), length - overhead, depth, key
                )
                ids = encode(template.first_before + before) + encode(document.text)
                ids += encode(after + template.after)
                t0 = time.perf_counter()
                answer = snapkv_answer(model, ids, args.budget, args.max_new_tokens, stops, device)
                text = tok.decode(answer, skip_special_tokens=True)
                trials.append(
                    needle_lib.NeedleTrial(
                        cache="snapkv",
                        length=length,
                        depth=depth,
                        seed=seed,
                        key=key,
                        answer=text,
                        correct=needle_lib.score_answer(text, key),
                        tokens=len(ids),
                        placed=document.placed,
                        seconds=time.perf_counter() - t0,
                    )
                )
                print(f"{length} {depth} {seed} {key} {text!r} {trials[-1].correct}", flush=True)
    cells = needle_lib.needle_accuracy(trials)
    result = {
        "model": loaded.name,
        "device": str(device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "press": "kvpress.SnapKVPress (window 64, kernel 5): whole prompt prefilled, then compressed",
        "budget": args.budget,
        "caches": ["snapkv"],
        "lengths": args.lengths,
        "depths": args.depths,
        "seeds": args.seeds,
        "needle": needle_lib.NEEDLE,
        "question": needle_lib.QUESTION,
        "results": [asdict(t) for t in trials],
        "grid": [{**asdict(c), "accuracy": c.accuracy} for c in cells],
        "seconds": round(time.perf_counter() - started, 3),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for cell in cells:
        print(f"{cell.length} depth {cell.depth}: {cell.correct}/{cell.trials}")


@torch.inference_mode()
def snapkv_answer(model, ids: list[int], budget: int, max_new: int, stops: set[int], device) -> list[int]:
    cache = DynamicCache()
    n = len(ids)
    ratio = max(0.0, 1.0 - budget / n)
    press = SnapKVPress(compression_ratio=ratio)
    with press(model):
        out = model(
            torch.tensor([ids], device=device),
            past_key_values=cache,
            use_cache=True,
            cache_position=torch.arange(n, device=device),
        )
    held = cache.layers[0].keys.shape[-2]
    assert held <= budget + 1, f"SnapKV kept {held} entries, budget {budget}"
    token = int(out.logits[0, -1].argmax())
    answer: list[int] = []
    position = n
    while token not in stops and len(answer) < max_new:
        answer.append(token)
        out = model(
            torch.tensor([[token]], device=device),
            past_key_values=cache,
            use_cache=True,
            position_ids=torch.tensor([[position]], device=device),
            cache_position=torch.tensor([position], device=device),
        )
        position += 1
        token = int(out.logits[0, -1].argmax())
    return answer


if __name__ == "__main__":
    main()
