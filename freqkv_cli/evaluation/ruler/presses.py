"""kvpress presses on the same samples: an optional extra, used only when ``kvpress`` imports.

kvpress (NVIDIA, Apache-2.0) is not a dependency of freqkv and is not installed by
``scripts/setup.sh``: ``pip install kvpress`` beside freqkv (it pins its own torch and
transformers; a GPU is what it is built for). Each press runs through kvpress's own pipeline:
the context (RULER's instruction and haystack, in the chat template) is compressed while it is
read, then the question and answer prefix follow uncompressed, decoded greedily. The budget is
freqkv's: ``compression_ratio = 1 - window / context tokens`` keeps ``window`` entries per layer,
what the windowed policies hold. Rows are named ``kvpress:NAME``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from ...errors import UsageError
from .run import RulerResult
from .sample import Sample
from .scoring import score

# Our names -> kvpress's classes (those whose only required setting is the compression ratio).
PRESSES = {
    "snapkv": "SnapKVPress",
    "streaming_llm": "StreamingLLMPress",
    "expected_attention": "ExpectedAttentionPress",
    "knorm": "KnormPress",
    "tova": "TOVAPress",
    "observed_attention": "ObservedAttentionPress",
    "random": "RandomPress",
}
MISSING = "--press needs kvpress, an optional extra that is not installed: pip install kvpress"


def kvpress_module() -> Any:
    """kvpress, or the one-line refusal (before any model is loaded)."""
    try:
        import kvpress
    except ImportError:
        raise UsageError(MISSING) from None
    return kvpress


def parse_presses(text: str | None) -> list[str]:
    """``"snapkv,knorm"`` -> press names, checked; kvpress must import when any is asked for."""
    if not text:
        return []
    names = list(dict.fromkeys(item.strip().lower() for item in text.split(",") if item.strip()))
    unknown = [name for name in names if name not in PRESSES]
    if unknown or not names:
        raise UsageError(f"--press: {text!r}: use some of {', '.join(PRESSES)}")
    module = kvpress_module()
    absent = [name for name in names if not hasattr(module, PRESSES[name])]
    if absent:
        raise UsageError(f"--press: this kvpress has no {', '.join(PRESSES[n] for n in absent)}")
    return names


class PressRunner:
    """kvpress's pipeline on one model, and each press at freqkv's window."""

    def __init__(self, model: Any, tokenizer: Any, window: int) -> None:
        module = kvpress_module()
        from transformers import pipeline

        self.module, self.window, self.model, self.tokenizer = module, window, model, tokenizer
        # Importing kvpress registers the task with transformers.
        self.pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)

    def run(self, name: str, sample: Sample) -> RulerResult:
        """``sample`` under the press ``name``; the row is ``kvpress:name``."""
        started = time.perf_counter()
        context = f"{sample.instruction}\n{sample.context}"
        tokens = len(self.tokenizer(context, add_special_tokens=False)["input_ids"])
        ratio = max(0.0, 1.0 - self.window / max(tokens, 1))
        press = getattr(self.module, PRESSES[name])(compression_ratio=ratio)
        with cache_positions_given(self.model):
            output = self.pipe(
                context,
                question="\n" + sample.question,
                answer_prefix=sample.answer_prefix,
                press=press,
                max_new_tokens=sample.max_new_tokens,
            )["answer"]
        return RulerResult(
            task=sample.task,
            cache=f"kvpress:{name}",
            length=sample.length,
            seed=sample.seed,
            answers=list(sample.answers),
            output=output,
            score=score(sample.metric, output, sample.answers),
            tokens=tokens,
            seconds=time.perf_counter() - started,
        )


@contextlib.contextmanager
def cache_positions_given(model: Any) -> Iterator[None]:
    """Hand each attention layer the ``cache_position`` kvpress's hooks read.

    kvpress 0.5 tells prefill from decoding by ``cache_position[-1] + 1 == query length``, and
    transformers 5.3 and later no longer pass ``cache_position`` to attention modules. The call's
    ``position_ids`` stand in: they equal it until kvpress compresses the cache, and after that the
    test still holds only while prefilling, which is all kvpress asks of it.
    """

    def give(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        positions = kwargs.get("position_ids")
        if kwargs.get("cache_position") is not None or positions is None:
            return None
        kwargs["cache_position"] = positions[0]
        return args, kwargs

    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    hooks = [layer.self_attn.register_forward_pre_hook(give, with_kwargs=True) for layer in inner.layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
