"""The streaming engine: feed any number of tokens through a fixed window, then decode.

Prefill follows the FreqKV schedule: tokens are appended until the window is full, the cache is
compressed, and the next ``F - L`` tokens go in; each forward call sees the whole cache, causal
inside the chunk. ``max_chunk`` splits calls only between compressions: memory, not results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..cache.policy import CachePolicy
from ..cache.selectors import Selector
from ..cache.state import State, copy_of
from ..cache.window_cache import CacheStats, WindowedCache
from ..errors import Interrupted
from .attention_kernels import attention_kernels, attention_named
from .chunk_attention import NAME as CHUNK_ATTENTION
from .chunk_size import DEFAULT_MAX_CHUNK
from .passages import QUOTE_LEFT, QUOTE_RIGHT, ExactPassages
from .pieces import as_pieces
from .query_capture import QueryCapture
from .replays import Replays
from .sampling import Sampler
from .timings import Timings

ProgressCallback = Callable[[int], None]  # called with the number of tokens just consumed


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    stop_reason: str  # "eos", "stop_string", "max_new_tokens", "interrupted"


class StreamingEngine:
    """Streams token ids through ``model`` with a :class:`WindowedCache` (batch size 1).

    ``model``: a Llama/Mistral/Qwen2/Qwen3 causal LM (has ``.model`` and ``.lm_head``).
    ``policy``: the cache policy asked for; :attr:`policy` is the one in force (a hybrid's exact
    slots fitted to a pinned question).
    ``tokenizer``: used only to decode generated text (stop strings, streaming callbacks).
    ``head_weights``: which query heads score tokens for the hybrid's exact slots (None: all).
    ``decode_graphs``, ``compile_decode``: what is replayed as CUDA graphs (:mod:`.replays`).
    ``fuse_rounds``: FreqKV and sink rounds fused (:mod:`..cache.fused_rounds`; None: on CUDA).
    ``chunk_attention``: prefill attends with :mod:`.chunk_attention` (None: on CUDA devices).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        policy: CachePolicy,
        tokenizer: object | None = None,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        lowpass_method: str = "auto",
        head_weights: torch.Tensor | None = None,  # (layers, q_heads)
        decode_graphs: bool | None = None,
        compile_decode: bool | None = None,
        chunk_attention: bool | None = None,
        fuse_rounds: bool | None = None,
    ) -> None:
        if max_chunk < 1:
            raise ValueError("max_chunk must be positive")
        self.model = model
        self.requested_policy = policy
        self.tokenizer = tokenizer
        self.max_chunk = max_chunk
        self.lowpass_method = lowpass_method
        self.head_weights = head_weights
        self.replays = Replays.for_model(model, decode_graphs, compile_decode, fuse_rounds)
        self.timings = Timings()
        self.chunk_attention = model.device.type == "cuda" if chunk_attention is None else chunk_attention
        self.reset()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def policy(self) -> CachePolicy:
        """The policy in force."""
        return self.cache.policy

    @property
    def selector(self) -> Selector | None:
        """How the hybrid chooses exact slots (None: not a hybrid cache)."""
        return self.cache.selector

    @property
    def pending_tokens(self) -> list[int]:
        """Tokens decided but not yet read into the cache (the end-of-turn token of an answer)."""
        return list(self._pending)

    def reset(self) -> None:
        """Forget everything: a new, empty cache."""
        self.cache = WindowedCache(
            self.requested_policy,
            self.model.config.num_hidden_layers,
            self.model.model.rotary_emb,
            lowpass_method=self.lowpass_method,
            buffers=self.replays.buffers,
            round_graphs=self.replays.rounds,
            fused_rounds=self.replays.fused_rounds,
            compiled_rounds=self.replays.compiled,
        )
        self._last_hidden: torch.Tensor | None = None
        self._pending: list[int] = []
        self._should_stop: Callable[[], bool] | None = None
        # Hybrid only: what quotes of the exact passages are made of.
        self.passages = ExactPassages(self.policy.window) if self.selector is not None else None

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def question_queries(self, ids: Sequence[int]) -> list[torch.Tensor]:
        """Every layer's queries ``(1, Hq, T, D)`` (pre-RoPE) of the question ``ids`` read after what
        this engine holds, which is left as it was: the question is read, then taken back."""
        before = self.state()
        try:
            with QueryCapture(self.model) as captured:
                self._feed(ids, False, None)
            return [q[:, :, -QUESTION_QUERIES:] for q in captured.queries()]
        finally:
            self.load_state(before)

    # -- saving and restoring ---------------------------------------------------------------
    def state(self) -> State:
        """All this engine holds: cache, last hidden state, unread tokens, hybrid passages."""
        state = State(facts={"pending": list(self._pending)})
        if self._last_hidden is not None:
            state.tensors["last_hidden"] = copy_of(self._last_hidden)
        state.put("cache", self.cache.state())
        if self.passages is not None:
            state.put("passages", self.passages.state())
        return state

    def load_state(self, state: State) -> None:
        """Go on exactly where :meth:`state` was taken (same model and policy kind)."""
        dtype = self.model.dtype
        devices = [layer.self_attn.k_proj.weight.device for layer in self.model.model.layers]
        self.cache.load_state(state.get("cache"), self.device, dtype, devices)  # emptied first
        hidden = state.tensor("last_hidden")
        self._last_hidden = None if hidden is None else hidden.to(self.device, dtype)
        self._pending = [int(token) for token in state.facts.get("pending", [])]
        self._should_stop = None
        if self.passages is not None:
            self.passages.load_state(state.get("passages"))

    # -- prefill -------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, ids: Sequence[int]) -> torch.Tensor:
        """One forward call that appends ``ids`` to the cache; returns hidden states (1, T, D)."""
        hidden = None
        if self.replays.chunks is not None and not QueryCapture.watching:
            hidden = self.replays.chunks.forward(self.cache, ids)  # None: not a replayed shape
        if hidden is None:
            start = self.cache.length
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            positions = torch.arange(start, start + len(ids), device=self.device)[None]
            name = CHUNK_ATTENTION if self.chunk_attention else None
            with attention_kernels(self.device, len(ids)), attention_named(self.model.config, name):
                out = self.model.model(
                    input_ids=input_ids, position_ids=positions, past_key_values=self.cache, use_cache=True
                )
            hidden = out.last_hidden_state
        if self.passages is not None:
            self.passages.read(ids)
        return hidden

    def _compress(self) -> None:
        self.cache.compress()
        if self.passages is not None:
            self.passages.after_round(self.cache.tokens_seen, self.cache.exact_tokens)

    def exact_passages(self, limit: int, left: int = QUOTE_LEFT, right: int = QUOTE_RIGHT) -> list[list[int]]:
        """Token ids of the ``limit`` best runs of consecutive exact entries (hybrid with a
        question), in stream order: the passages the question's attention kept, each widened
        by up to ``left`` / ``right`` of the tokens read around it, overlapping ones merged."""
        tokens, scores = self.cache.exact_tokens, self.cache.exact_scores
        selector, passages = self.selector, self.passages
        if tokens is None or scores is None or limit <= 0 or selector is None or not selector.asked:
            return []
        assert passages is not None
        return passages.best(tokens, scores, limit, left, right)

    def _feed_hidden(self, ids: Sequence[int]) -> Iterable[tuple[Sequence[int], torch.Tensor]]:
        """Append ``ids`` with compression as the window fills; yields (chunk, hidden) per forward."""
        ids = list(ids)
        pos = 0
        previous = self._last_hidden
        while pos < len(ids):
            room = self.cache.room()
            if room == 0:
                self._compress()
                room = self.cache.room()
            size = min(len(ids) - pos, self.max_chunk, room if room is not None else len(ids))
            chunk = ids[pos : pos + size]
            start = self.cache.length
            hidden = self._forward(chunk)
            if self.selector is not None:
                self.selector.observe(start, chunk, hidden, previous, self.logits)
            previous = hidden[:, -1]
            pos += size
            yield chunk, hidden

    def feed(
        self,
        token_ids: Iterable[int] | Iterable[Sequence[int]],
        *,
        pin: bool = False,
        question: bool = False,
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> torch.Tensor | None:
        """Append tokens (ints, or an iterable of int lists for streaming). Returns the last logits.

        ``pin=True`` keeps these tokens exact through every later compression (e.g. a
        question placed before a document); only valid while everything before is pinned.
        ``question=True`` marks these tokens as the question: under the hybrid policy their
        queries choose which later tokens stay exact (the last ``QUESTION_QUERIES`` of them).
        A book need not be tokenized up front: pass a generator of token lists.
        ``should_stop`` is polled between forward calls; when it returns True, feeding
        stops with :class:`Interrupted` (the cache keeps what was read, consistently).
        """
        self._should_stop = should_stop
        if pin and self.cache.length != self.cache.pinned:
            raise ValueError("pin=True only for a prefix: everything fed before must be pinned too")
        capture = question and self.selector is not None
        with (
            self.timings.timing("read", self.device),
            QueryCapture(self.model) if capture else nullcontext() as captured,
        ):
            self._feed(token_ids, pin, on_progress)
        if captured is not None:
            # Only the question's own tokens: the instruction's and the "Document:" cue's queries
            # point at line starts and headings (measured: the pass-key sentence ranked 2nd-6th
            # of 900 tokens with the last 32 prompt tokens, 1st in 10 of 10 with the question's).
            queries = [q[:, :, -QUESTION_QUERIES:] for q in captured.queries()]
            self.selector.ask(queries, self.head_weights)
        if self._last_hidden is None:
            return None
        return self.logits(self._last_hidden)

    def _feed(
        self,
        token_ids: Iterable[int] | Iterable[Sequence[int]],
        pin: bool,
        on_progress: ProgressCallback | None,
    ) -> None:
        buffer: list[int] = self._pending
        self._pending = []
        for piece in as_pieces(token_ids):
            buffer.extend(piece)
            if pin:
                continue
            # Forward whole chunks as soon as they are available; keep a remainder for later pieces.
            while buffer and len(buffer) >= self._next_chunk_size():
                size = self._next_chunk_size()
                self._consume(buffer[:size], on_progress)
                del buffer[:size]
        if pin:
            head = max(self.policy.sink, self.cache.length + len(buffer))
            self.policy.fitted(head).validate(head=head)
        if buffer:
            self._consume(buffer, on_progress)
        if pin:
            self.cache.pin(self.cache.length)

    def _next_chunk_size(self) -> int:
        room = self.cache.room()
        if room == 0:  # full: compress now (what the next forward would do first anyway)
            self._compress()
            room = self.cache.room()
        return min(self.max_chunk, room) if room is not None else self.max_chunk

    def _consume(self, ids: Sequence[int], on_progress: ProgressCallback | None) -> int:
        for chunk, hidden in self._feed_hidden(ids):
            self.timings.read_tokens += len(chunk)
            if self._should_stop is not None and self._should_stop():
                self._last_hidden = hidden[:, -1]
                raise Interrupted(f"interrupted after {self.cache.tokens_seen} tokens")
            self._last_hidden = hidden[:, -1]
            if on_progress is not None:
                on_progress(len(chunk))
        return len(ids)

    def _flush_pending(self) -> None:
        """Feed the end-of-turn token a finished answer left behind, so the history stays in order."""
        if self._pending:
            pending, self._pending = self._pending, []
            for _chunk, hidden in self._feed_hidden(pending):
                self._last_hidden = hidden[:, -1]

    def next_logits(self) -> torch.Tensor | None:
        """``(1, vocab)`` float32 logits of the token that would come next (None before any feed)."""
        return None if self._last_hidden is None else self.logits(self._last_hidden)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (float32) for hidden states ``(..., D)``."""
        return self.model.lm_head(hidden).float()

    @torch.inference_mode()
    def score(
        self, token_ids: Sequence[int], *, on_progress: ProgressCallback | None = None, block: int = 512
    ) -> torch.Tensor:
        """Negative log-likelihood of every token after the first, streamed (float32, ``len - 1``).

        Token ``t`` is predicted by the model that has streamed tokens ``0 .. t-1`` through
        the cache policy: the perplexity the paper reports for long texts.
        """
        nll: list[torch.Tensor] = []
        ids = list(token_ids)
        self._flush_pending()
        previous = self._last_hidden
        for chunk, hidden in self._feed_hidden(ids):
            # Predictions for this chunk's tokens: the last hidden before it, then its own.
            inputs = hidden[0] if previous is None else torch.cat([previous, hidden[0]], dim=0)
            targets = torch.tensor(chunk if previous is not None else chunk[1:], device=self.device)
            inputs = inputs[: len(targets)]
            for start in range(0, len(targets), block):
                logp = torch.log_softmax(self.logits(inputs[start : start + block]), dim=-1)
                target = targets[start : start + block]
                nll.append(-logp.gather(-1, target[:, None])[:, 0])
            previous = hidden[0, -1:]
            if on_progress is not None:
                on_progress(len(chunk))
        self._last_hidden = previous
        return torch.cat(nll) if nll else torch.empty(0)

    @torch.inference_mode()
    def generate(
        self,
        max_new_tokens: int = 256,
        sampler: Sampler | None = None,
        *,
        stop_token_ids: Iterable[int] = (),
        stop_strings: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Decode after :meth:`feed`. Generated tokens stay in the cache (a chat goes on).

        ``on_text`` gets each new piece of decoded text as soon as it is complete UTF-8.
        ``should_stop`` is polled between tokens (e.g. Ctrl-C sets a flag).
        """
        if self._last_hidden is None:
            raise ValueError("feed() something before generate()")
        with self.timings.timing("decode", self.device):
            result = self._generate(
                max_new_tokens, sampler, stop_token_ids, stop_strings, on_text, should_stop
            )
        self.timings.decoded_tokens += len(result.token_ids)
        return result

    def _generate(
        self,
        max_new_tokens: int,
        sampler: Sampler | None,
        stop_token_ids: Iterable[int],
        stop_strings: Sequence[str],
        on_text: Callable[[str], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> GenerationResult:
        self._flush_pending()
        sampler = sampler or Sampler()
        stops = set(stop_token_ids)
        generated: list[int] = []
        emitted = ""
        reason = "max_new_tokens"
        logits = self.logits(self._last_hidden)[0]
        for _ in range(max_new_tokens):
            if should_stop is not None and should_stop():
                reason = "interrupted"
                break
            token = sampler(logits, generated)
            generated.append(token)
            if token in stops:
                self._pending = [token]  # the end-of-turn token belongs to the history
                reason = "eos"
                generated.pop()
                break
            text = self._decode(generated)
            if stop_strings and any(s in text for s in stop_strings):
                cut = min(text.index(s) for s in stop_strings if s in text)
                text = text[:cut]
                if on_text is not None and len(text) > len(emitted):
                    on_text(text[len(emitted) :])
                emitted = text
                reason = "stop_string"
                self._pending = [token]
                break
            if on_text is not None and not text.endswith("\ufffd") and len(text) > len(emitted):
                on_text(text[len(emitted) :])
                emitted = text
            logits = self._advance(token)
        text = self._decode(generated) if reason != "stop_string" else emitted
        if on_text is not None and len(text) > len(emitted) and reason != "stop_string":
            on_text(text[len(emitted) :])
        return GenerationResult(token_ids=generated, text=text, stop_reason=reason)

    @torch.inference_mode()
    def advance(self, token: int) -> torch.Tensor:
        """Read one token into the cache as decoding does (the replayed step where there is one);
        returns the next token's ``(vocab,)`` float32 logits. Teacher-forced decoding: the same
        tokens through two engines, whatever either would have sampled."""
        self._flush_pending()
        return self._advance(token)

    def _advance(self, token: int) -> torch.Tensor:
        """Read one generated token into the cache; returns the next token's ``(vocab,)`` logits."""
        if self.replays.decoder is None or not self.replays.decoder.accepts(self.cache):
            for _chunk, hidden in self._feed_hidden([token]):
                self._last_hidden = hidden[:, -1]
            return self.logits(self._last_hidden)[0]
        if self.cache.room() == 0:
            self._compress()
        start, previous = self.cache.length, self._last_hidden
        hidden, logits = self.replays.decoder.step(self.cache, token)
        if self.passages is not None:
            self.passages.read([token])
        if self.selector is not None:
            self.selector.observe(start, [token], hidden, previous, self.logits)
        self._last_hidden = hidden[:, -1]
        return logits[0]

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]


QUESTION_QUERIES = 64  # last question tokens whose queries score tokens for the exact slots
