"""A transformers ``Cache`` with a fixed window that compresses (or evicts) when full.

Every layer preallocates ``window`` slots, so appending a token writes one slot and
never copies the cache (a CUDA graph can capture that). Entry ``i`` of every layer has
RoPE position ``i``: the model derives query positions from ``get_seq_length()``, and
compression re-rotates the keys it rewrites, so slot index and position never drift.

Compression happens between forward calls (``compress()``, driven by the engine when the
window is full), never inside one: within a forward pass the cache only grows, so the
stock causal masks and attention kernels stay exact.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from .compress_round import HybridState, compress_round, gather_slots, hybrid_round, plan_hybrid_round
from .policy import CachePolicy
from .rotary import KeyRotation


@dataclass
class CacheStats:
    """What the cache holds, summed over layers where it is a size."""

    tokens_seen: int  # tokens appended since the last reset
    entries: int  # entries one layer holds now (<= window for freqkv/sink)
    compressions: int  # compression (or eviction) rounds done
    kv_bytes: int  # bytes of the entries held, all layers, keys + values
    kv_reserved_bytes: int  # bytes of the preallocated buffers, all layers
    full_kv_bytes: int  # bytes a full cache would hold for tokens_seen
    compress_seconds: float  # wall time spent compressing


class WindowLayer(CacheLayerMixin):
    """One layer's keys and values in preallocated buffers ``(batch, kv_heads, capacity, head_dim)``."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int | None) -> None:
        super().__init__()
        self.capacity = capacity  # None: grows by doubling (the full policy)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, seq, _ = key_states.shape
        slots = self.capacity if self.capacity is not None else max(256, seq)
        self.keys = key_states.new_empty((batch, heads, slots, key_states.shape[-1]))
        self.values = value_states.new_empty((batch, heads, slots, value_states.shape[-1]))
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        # Grow by a quarter (in 1024-slot steps), not by doubling: the old and new buffers
        # coexist during the copy, and doubling a 16 GiB cache peaked at 48 GiB on the GPU.
        # Where even the spare quarter does not fit, grow to exactly what is needed.
        sizes = [-(-n // 1024) * 1024 for n in (max(needed, self.keys.shape[-2] * 5 // 4), needed)]
        for attempt, slots in enumerate(sizes):
            try:
                keys = self.keys.new_empty((*self.keys.shape[:2], slots, self.keys.shape[-1]))
                values = self.values.new_empty((*self.values.shape[:2], slots, self.values.shape[-1]))
                break
            except torch.OutOfMemoryError:
                keys = values = None  # free the half that was allocated before trying smaller
                if attempt == len(sizes) - 1:
                    raise
        keys[:, :, : self.length] = self.keys[:, :, : self.length]
        values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        seq = key_states.shape[-2]
        end = self.length + seq
        if end > self.keys.shape[-2]:
            if self.capacity is not None:
                raise RuntimeError(
                    f"window overflow: {end} > {self.capacity}; the engine must compress first"
                )
            self._grow(end)
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(
        self, query_length: int | torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # older transformers pass cache_position
            query_length = query_length.shape[0]
        return self.length + int(query_length), 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1 if self.capacity is None else self.capacity

    def reset(self) -> None:
        self.length = 0

    def held_bytes(self) -> int:
        if not self.is_initialized:
            return 0
        per_entry = self.keys[:, :, :1].nbytes + self.values[:, :, :1].nbytes
        return per_entry * self.length

    def reserved_bytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes if self.is_initialized else 0


class WindowedCache(Cache):
    """The KV cache of a whole model under one :class:`CachePolicy`.

    ``rotary_emb`` is the model's rotary embedding module (``model.model.rotary_emb``).
    ``lowpass_method``: ``"auto"``, ``"fft"`` or ``"matrix"`` (see :mod:`.dct`).
    """

    def __init__(
        self,
        policy: CachePolicy,
        num_layers: int,
        rotary_emb: nn.Module,
        lowpass_method: str = "auto",
    ) -> None:
        capacity = None if policy.kind == "full" else policy.window
        super().__init__(layers=[WindowLayer(capacity) for _ in range(num_layers)])
        self.policy = policy
        self.rotation = KeyRotation(rotary_emb)
        self.lowpass_method = lowpass_method
        self.pinned = 0
        self.tokens_seen = 0
        self.compressions = 0
        self.compress_seconds = 0.0
        self._reset_hybrid()

    def _reset_hybrid(self) -> None:
        # Hybrid layout per layer: [head | exact e | compressed c | tail (exact, in stream order)];
        # one choice for all layers and heads.
        self.hybrid = HybridState()
        self.random = torch.Generator().manual_seed(self.policy.seed)
        self.queries: list[torch.Tensor] | None = None  # per layer (B, Hq, Tq, D), pre-RoPE
        self.head_weights: torch.Tensor | None = None  # (layers, Hq): which query heads score
        self.surprise: torch.Tensor | None = None  # (B, window): NLL of the token in each slot
        self.match_stats = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares
        self._asked: dict[int, torch.Tensor] = {}  # layer -> queries rotated to the last slot

    def record_surprise(self, start: int, nll: torch.Tensor) -> None:
        """``nll`` ``(B, n)`` of the tokens just written to slots ``start .. start + n - 1``."""
        if self.surprise is None:
            self.surprise = nll.new_zeros((nll.shape[0], self.policy.window))
        self.surprise[:, start : start + nll.shape[1]] = nll.float()

    def set_queries(
        self, queries: list[torch.Tensor] | None, head_weights: torch.Tensor | None = None
    ) -> None:
        """Question queries per layer (pre-RoPE) for query-aware selection of exact tokens.

        ``head_weights`` ``(layers, Hq)``: how much each query head's attention counts (a
        retrieval-head profile, see :mod:`.head_profile`); None counts every head the same.
        """
        self.queries = queries
        self.match_stats = torch.zeros(3, dtype=torch.float64)  # a new question: new statistics
        self._asked = {}
        self.head_weights = None if head_weights is None else head_weights.float().cpu()

    @property
    def exact_count(self) -> int:
        return self.hybrid.e

    @property
    def compressed_count(self) -> int:
        return self.hybrid.c

    @property
    def exact_tokens(self) -> torch.Tensor | None:
        """``(B, e)`` stream index of each exact entry (hybrid), in stream order."""
        return self.hybrid.tokens

    # -- what the engine asks -------------------------------------------------------
    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def head(self) -> int:
        """Leading entries never compressed: the sinks, or the pinned prefix if longer."""
        return max(self.policy.sink, self.pinned)

    def room(self) -> int | None:
        """Tokens that can be appended before the next compression (None: unbounded)."""
        if self.policy.kind == "full":
            return None
        return self.policy.window - self.length

    def pin(self, count: int) -> None:
        """Keep the first ``count`` entries exact in every later round (e.g. a question)."""
        self.policy = self.policy.fitted(max(self.policy.sink, count))
        self.policy.validate(head=max(self.policy.sink, count))
        self.pinned = count

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: object,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == 0:
            self.tokens_seen += key_states.shape[-2]
        return self.layers[layer_idx].update(key_states, value_states)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.pinned = 0
        self.tokens_seen = 0
        self.compressions = 0
        self.compress_seconds = 0.0
        self._reset_hybrid()

    # -- compression ------------------------------------------------------------------
    @torch.inference_mode()
    def compress(self) -> None:
        """One round on every layer: the window must be full."""
        if self.policy.kind == "full":
            raise RuntimeError("the full policy never compresses")
        if self.length != self.policy.window:
            raise RuntimeError(f"compress() needs a full window ({self.length} of {self.policy.window} held)")
        device = self.layers[0].keys.device
        if device.type == "cuda":  # time this round only, not the forward still queued before it
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        head, recent = self.head, self.policy.recent
        if self.policy.kind == "hybrid":
            self._compress_hybrid(head, recent)
        else:
            span, kept = self.policy.span(head), self.policy.kept(head)
            # Layers go in batches (layers, batch, heads, seq, head_dim): fewer kernel launches on
            # GPUs, with bounded float32 scratch; on CPUs one layer at a time measured fastest.
            group = 1 if device.type == "cpu" else 4
            for first in range(0, len(self.layers), group):
                self._compress_layers(self.layers[first : first + group], head, span, kept)
        self.compressions += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.compress_seconds += time.perf_counter() - started

    def _compress_layers(self, layers: list[WindowLayer], head: int, span: int, kept: int) -> None:
        pieces = compress_round(
            lambda begin, end: _read_stacked(layers, begin, end),
            kind=self.policy.kind,
            head=head,
            span=span,
            kept=kept,
            window=self.policy.window,
            rotation=self.rotation,
            method=self.lowpass_method,
            # 16-bit caches may use TF32 for the DCT matmul (measured on an H100: 112 -> 65 ms a round).
            tf32=layers[0].keys.dtype in (torch.bfloat16, torch.float16),
        )
        _write_pieces(layers, head, pieces)

    def _compress_hybrid(self, head: int, recent: int) -> None:
        """One hybrid round: score the tail tokens leaving the recent window, keep the best spans
        in the exact slots (in stream order), low-pass the rest with the compressed part.

        One choice serves every layer and head (chosen per layer, the early layers, whose
        queries are not yet about meaning, kept other tokens and blurred the needle there), so
        the slot plan is computed once and applied to stacked layer groups, as FreqKV's is.
        """
        policy, window = self.policy, self.policy.window
        tail = head + self.hybrid.e + self.hybrid.c
        candidates = window - recent - tail
        if self.policy.selector == "surprise" and self.surprise is not None:
            scores = self.surprise[:, tail : tail + candidates]
        elif self.policy.selector == "random":
            scores = self._random_scores(candidates)
        else:
            scores = self._combined_scores(tail, candidates)  # (B, n)
        plan, self.hybrid = plan_hybrid_round(
            self.hybrid,
            scores,
            select_spans,
            head=head,
            recent=recent,
            window=window,
            quota=policy.quota(),
            exact_slots=policy.exact_slots(),
            ratio=policy.ratio,
            tokens_seen=self.tokens_seen,
        )
        device = plan.exact_from.device
        tf32 = self.layers[0].keys.dtype in (torch.bfloat16, torch.float16)
        for first in range(0, len(self.layers), group := self._hybrid_group(device)):
            layers = self.layers[first : first + group]
            # One stacked copy per group, gathered from: two gathers a round, not two per layer.
            keys, values = _read_stacked(layers, 0, window)  # (layers, B, H, N, D)

            def gather(slots: torch.Tensor, k: torch.Tensor = keys, v: torch.Tensor = values) -> tuple:
                return gather_slots(k, slots), gather_slots(v, slots)

            def read(begin: int, end: int, k: torch.Tensor = keys, v: torch.Tensor = values) -> tuple:
                return k[..., begin:end, :], v[..., begin:end, :]

            pieces = hybrid_round(
                gather,
                read,
                plan,
                self.rotation,
                method=self.lowpass_method,
                tf32=tf32,
            )
            _write_pieces(layers, head, pieces)  # everything was read above: now overwrite
        if self.surprise is not None:  # the recent tokens' scores move with them
            moved_to = plan.length - recent
            self.surprise[:, moved_to : plan.length] = self.surprise[:, window - recent : window].clone()

    def _random_scores(self, candidates: int) -> torch.Tensor:
        """Seeded noise: picks spans at random (training augmentation, and the tests that replay
        a training schedule through this cache)."""
        noise = torch.rand(1, candidates, generator=self.random)
        return noise.to(self.layers[0].keys.device)

    def _hybrid_group(self, device: torch.device) -> int:
        """Layers per stacked hybrid step: one on CPUs (measured fastest, as for FreqKV); on GPUs
        as many as keep each float32 scratch tensor under 256 MiB. A small model's round is
        mostly kernel launches (135M on an H100: 30 layers in groups of 4 made the hybrid round
        1.5x a FreqKV round), a 7B model's is memory traffic (groups of 4)."""
        if device.type == "cpu":
            return 1
        keys = self.layers[0].keys
        per_layer = keys.shape[0] * keys.shape[1] * self.policy.window * keys.shape[-1] * 4
        return max(1, min(len(self.layers), (256 << 20) // max(per_layer, 1)))

    def _combined_scores(self, tail: int, candidates: int) -> torch.Tensor:
        """``(B, n)``: one score per candidate slot, for every layer and head to share.

        Without a question: low key norm, standardized per layer and head. With one: how well
        the candidate matches the question (:meth:`question_match`), averaged over the
        retrieval heads of the profile (most heads of a small model attend everywhere; measured
        in docs/BENCHMARKS.md section 6), then summed over a short neighbourhood
        (:meth:`_match_density`).
        """
        asked = self.queries is not None and self.policy.selector == "attention"
        if not asked:  # key norm: every layer and KV head counts the same; one stacked step
            norms = torch.stack(
                [layer.keys[:, :, tail : tail + candidates].float().norm(dim=-1) for layer in self.layers]
            )  # (layers, B, Hkv, n)
            return _standardize(-norms).mean(dim=(0, 2))
        total: torch.Tensor | None = None
        weight_sum = 0.0
        for index, layer in enumerate(self.layers):
            weights = None
            if self.head_weights is not None:
                weights = self.head_weights[index]
                if not bool((weights > 0).any()):
                    continue  # no scoring head in this layer: skip its attention entirely
            match = self.question_match(index, layer.keys[:, :, tail : tail + candidates])
            if weights is None:
                part, weight = match.sum(dim=1), float(match.shape[1])
            else:
                part = torch.einsum("bhn,h->bn", match, weights.to(match.device))
                weight = float(weights.sum())
            total = part if total is None else total + part
            weight_sum += weight
        assert total is not None, "a head profile must weight at least one head"
        return self._match_density(total / weight_sum)

    def _match_density(self, match: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` match -> how much above-average match a span starting ``SPAN_LEFT`` before
        each token holds in its first ``DENSITY`` tokens.

        Matches are standardized by the running mean and spread of every candidate scored since
        the question was asked, so scores from different rounds compete fairly for the exact
        slots (a per-round standardization gave each round's best span a top score whatever it
        held). Summing the excess over a neighbourhood favours the passage that matches several
        of the question's words ("dinner party ... held at ... restaurant") over the many that
        repeat one phrase ("farewell dinner"). Measured on five questions about a 65k-token novel
        (benchmarks/trace_selection.py): the answer's span ranked 148-400th of the book's spans
        under the old per-round softmax score, 1st-163rd under this one (43, 16, 163, 13, 1);
        only excess over one standard deviation counts, so background noise does not add up.
        """
        values = match.double()
        self.match_stats += torch.stack(
            [values.new_tensor(values.numel()), values.sum(), values.square().sum()]
        ).cpu()
        count, total, squares = self.match_stats.tolist()
        mean = total / count
        spread = math.sqrt(max(squares / count - mean * mean, 1e-12))
        excess = ((match - mean) / spread - 1).clamp(min=0)
        padded = torch.nn.functional.pad(excess, (SPAN_LEFT, DENSITY - 1 - SPAN_LEFT))
        return padded.unfold(-1, DENSITY, 1).sum(dim=-1)

    def _question_logits(self, index: int, cand_k: torch.Tensor) -> torch.Tensor:
        """``(B, Hq, Tq, n)`` attention logits from each question token to the candidate keys
        ``cand_k`` ``(B, Hkv, n, D)`` of layer ``index`` (:meth:`set_queries` first). The queries
        are rotated to the last slot: they look back at the candidates as a question asked
        after the text would."""
        assert self.queries is not None, "scoring needs the question's queries"
        q = self._asked.get(index)
        if q is None or q.device != cand_k.device:  # rotated once per question, not every round
            q = self.queries[index].to(cand_k.device).float()  # (B, Hq, Tq, D)
            q = self.rotation.rotate(q, torch.full((q.shape[2],), self.policy.window - 1, device=q.device))
            self._asked[index] = q
        return question_logits(q, cand_k)

    def question_scores(self, index: int, cand_k: torch.Tensor) -> torch.Tensor:
        """Attention ``(B, Hq, n)`` per query head from the question to the candidate keys of layer
        ``index``, averaged over the question's tokens (what head calibration ranks)."""
        return torch.softmax(self._question_logits(index, cand_k), dim=-1).mean(dim=2)

    def question_match(self, index: int, cand_k: torch.Tensor) -> torch.Tensor:
        """``(B, Hq, n)``: each candidate's best attention logit from any question token. A logit,
        not a softmax share: it does not depend on what else this round holds, so a round full
        of near-matches cannot crowd out the passage that answers."""
        return self._question_logits(index, cand_k).amax(dim=2)

    # -- readouts -----------------------------------------------------------------------
    def stats(self) -> CacheStats:
        layers = [layer for layer in self.layers if layer.is_initialized]
        held = sum(layer.held_bytes() for layer in layers)
        per_token = held / self.length if self.length else 0
        return CacheStats(
            tokens_seen=self.tokens_seen,
            entries=self.length,
            compressions=self.compressions,
            kv_bytes=held,
            kv_reserved_bytes=sum(layer.reserved_bytes() for layer in layers),
            full_kv_bytes=int(per_token * self.tokens_seen),
            compress_seconds=self.compress_seconds,
        )


# A selected token brings its neighbours along: a fact is a phrase, not a token. The span
# reaches further right than left because the tokens a question matches ("pass key is",
# "was called") come before the answer. Measured on the pass-key needle: a centred span of
# 15 cut "The pass key is 35209|80" after the digits, and the model then invented the rest.
SPAN_LEFT, SPAN_RIGHT = 3, 11
# Tokens from the span's start whose question match adds up to its score (with a question).
# 8 ranked the answers of five novel questions best among 1, 4, 8, 12 and 16.
DENSITY = 8


def select_spans(score: torch.Tensor, take: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, n)`` scores -> ``(B, take)`` sorted indices and the score of each one's span: the
    best token with ``SPAN_LEFT`` neighbours before it and ``SPAN_RIGHT`` after, then the next
    best outside the spans taken, until ``take`` are chosen.

    The greedy walk runs on the host over one copy of the scores: on a GPU each step would wait
    for the device (a few dozen waits a round, which a small model's round is made of)."""
    batch, n = score.shape
    host = score.detach().float().cpu()
    order = torch.sort(host, dim=-1, descending=True, stable=True).indices.tolist()  # ties: first index
    rows: list[list[int]] = []
    values: list[list[float]] = []
    for row in range(batch):
        scores = host[row].tolist()
        chosen = [False] * n
        span_score = [0.0] * n
        count = 0
        for centre in order[row]:
            if count == take or scores[centre] == float("-inf"):
                break
            if chosen[centre]:
                continue
            span = range(max(0, centre - SPAN_LEFT), min(n, centre + SPAN_RIGHT + 1))
            for slot in [i for i in span if not chosen[i]][: take - count]:
                chosen[slot], span_score[slot] = True, scores[centre]
                count += 1
        picked = [i for i in range(n) if chosen[i]]
        rows.append(picked)
        values.append([span_score[i] for i in picked])
    if any(len(picked) != take for picked in rows):
        raise ValueError(f"only {min(map(len, rows))} of {take} candidates have a finite score")
    index = torch.tensor(rows, dtype=torch.long).reshape(batch, take).to(score.device)
    return index, torch.tensor(values, dtype=score.dtype).reshape(batch, take).to(score.device)


def question_logits(queries: torch.Tensor, cand_k: torch.Tensor) -> torch.Tensor:
    """``(B, Hq, Tq, n)`` scaled dot products of rotated ``queries`` ``(B, Hq, Tq, D)`` with the
    keys ``cand_k`` ``(B, Hkv, n, D)``, query heads grouped over the KV heads they share (GQA)."""
    batch, heads, tq, dim = queries.shape
    kv_heads = cand_k.shape[1]
    grouped = queries.view(batch, kv_heads, heads // kv_heads, tq, dim)
    logits = torch.einsum("bhgtd,bhnd->bhgtn", grouped, cand_k.float()) / math.sqrt(dim)
    return logits.flatten(1, 2)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Scores of one layer made comparable with other layers': zero mean, unit spread per head."""
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-6)


def _read_stacked(layers: list[WindowLayer], begin: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of slots ``begin .. end - 1``, stacked over ``layers``: ``(L, B, H, n, D)``."""
    keys = torch.stack([layer.keys[:, :, begin:end] for layer in layers])
    return keys, torch.stack([layer.values[:, :, begin:end] for layer in layers])


def _write_pieces(
    layers: list[WindowLayer], head: int, pieces: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Write a round's ``(keys, values)`` pieces (stacked over ``layers``) after the head, in order:
    joined first, so a layer takes two copies whatever the number of pieces (GPU launches)."""
    dtype = layers[0].keys.dtype
    keys = torch.cat([k.to(dtype) for k, _ in pieces], dim=-2)
    values = torch.cat([v.to(dtype) for _, v in pieces], dim=-2)
    end = head + keys.shape[-2]
    for index, layer in enumerate(layers):
        layer.keys[:, :, head:end] = keys[index]
        layer.values[:, :, head:end] = values[index]
        layer.length = end
