"""A transformers ``Cache`` with a fixed window that compresses (or evicts) when full.

Every layer preallocates ``window`` slots (:mod:`.layers`). Entry ``i`` of every layer has
RoPE position ``i``: the model derives query positions from ``get_seq_length()``, and
compression re-rotates the keys it rewrites, so slot index and position never drift.

Compression happens between forward calls (``compress()``, driven by the engine when the
window is full), never inside one: within a forward pass the cache only grows, so the
stock causal masks and attention kernels stay exact.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache

from .buffers import SlotBuffers
from .compress_round import HybridState
from .fused_rounds import FusedSpanRounds
from .hybrid import HybridRounds
from .layers import GrowingLayer, WindowLayer
from .policy import CachePolicy
from .rotary import KeyRotation
from .round_graphs import RoundGraphs
from .rounds import Rounds, SpanRounds
from .selectors import Selector, make_selector
from .state import State, copy_of


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


class WindowedCache(Cache):
    """The KV cache of a whole model under one :class:`CachePolicy`.

    ``rotary_emb`` is the model's rotary embedding module (``model.model.rotary_emb``).
    ``lowpass_method``: ``"auto"``, ``"fft"`` or ``"matrix"`` (see :mod:`.dct`).
    ``selector``: the hybrid's way of choosing exact slots (default: the one the policy names).
    ``buffers``: where the windows' slots live, shared by the caches an engine makes in turn.
    ``round_graphs``: replays the rounds over those slots (CUDA).
    ``fused_rounds``: FreqKV and sink rounds as :mod:`.fused_rounds` does them (``compiled_rounds``:
    through torch.compile).
    """

    def __init__(
        self,
        policy: CachePolicy,
        num_layers: int,
        rotary_emb: nn.Module,
        lowpass_method: str = "auto",
        selector: Selector | None = None,
        buffers: SlotBuffers | None = None,
        round_graphs: RoundGraphs | None = None,
        fused_rounds: bool = False,
        compiled_rounds: bool = False,
    ) -> None:
        if policy.kind == "full":
            layers: list[WindowLayer] = [GrowingLayer() for _ in range(num_layers)]
        else:
            layers = [WindowLayer(policy.window, buffers, index) for index in range(num_layers)]
        super().__init__(layers=layers)
        self.policy = policy
        self.rotation = KeyRotation(rotary_emb)
        self.rounds: Rounds | None = None  # None: never compresses (full)
        self.selector: Selector | None = None
        if policy.kind == "hybrid":
            self.selector = selector if selector is not None else make_selector(policy, rotary_emb)
            self.rounds = HybridRounds(self.rotation, lowpass_method, selector=self.selector)
        elif policy.kind != "full":
            if fused_rounds:
                self.rounds = FusedSpanRounds(
                    self.rotation, lowpass_method, kind=policy.kind, compile=compiled_rounds
                )
            else:
                self.rounds = SpanRounds(self.rotation, lowpass_method, kind=policy.kind)
        self.round_graphs = round_graphs
        self.pinned = 0
        self.tokens_seen = 0
        self.compressions = 0
        self.compress_seconds = 0.0

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
        if self.rounds is None:
            return None
        return self.policy.window - self.length

    def pin(self, count: int) -> None:
        """Keep the first ``count`` entries exact in every later round (e.g. a question)."""
        self.policy = self.policy.fitted(max(self.policy.sink, count))
        self.policy.validate(head=max(self.policy.sink, count))
        self.pinned = count

    def entries(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s held keys (rotated: entry ``i`` at position ``i``) and values,
        ``(B, Hkv, length, D)`` views."""
        return self.layers[layer].entries()

    @property
    def hybrid_state(self) -> HybridState | None:
        """The hybrid's exact and compressed counts and its exact entries (None: not hybrid)."""
        return self.rounds.held if isinstance(self.rounds, HybridRounds) else None

    @property
    def exact_count(self) -> int:
        state = self.hybrid_state
        return state.e if state is not None else 0

    @property
    def compressed_count(self) -> int:
        state = self.hybrid_state
        return state.c if state is not None else 0

    @property
    def exact_tokens(self) -> torch.Tensor | None:
        """``(B, e)`` stream index of each exact entry (hybrid), in stream order."""
        state = self.hybrid_state
        return state.tokens if state is not None else None

    @property
    def exact_scores(self) -> torch.Tensor | None:
        """``(B, e)`` the score each exact entry was kept with (hybrid)."""
        state = self.hybrid_state
        return state.scores if state is not None else None

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

    def appended(self, count: int) -> None:
        """``count`` entries were written into every layer's slots in place (a replayed decode
        graph, which cannot call :meth:`update`): hold them."""
        for layer in self.layers:
            layer.hold(layer.length + count)
        self.tokens_seen += count

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.pinned = 0
        self.tokens_seen = 0
        self.compressions = 0
        self.compress_seconds = 0.0
        if self.rounds is not None:
            self.rounds.reset()

    # -- compression ------------------------------------------------------------------
    @torch.inference_mode()
    def compress(self) -> None:
        """One round on every layer: the window must be full."""
        if self.rounds is None:
            raise RuntimeError("the full policy never compresses")
        if self.length != self.policy.window:
            raise RuntimeError(f"compress() needs a full window ({self.length} of {self.policy.window} held)")
        device = self.layers[0].keys.device
        if device.type == "cuda":  # time this round only, not the forward still queued before it
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        plan = self.rounds.plan(self.layers, self.policy, self.head, self.tokens_seen)
        graphs = self.round_graphs
        if graphs is None or not graphs.apply(self.rounds, self.layers, self.policy, plan):
            self.rounds.apply(self.layers, self.policy, plan)
        self.compressions += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.compress_seconds += time.perf_counter() - started

    # -- saving and restoring ---------------------------------------------------------------
    def state(self) -> State:
        """Everything this cache holds (see :mod:`.state`): each layer's entries, the policy in
        force, the counters and what the rounds and the selector remember."""
        state = State(
            facts={
                "policy": asdict(self.policy),
                "layers": len(self.layers),
                "pinned": self.pinned,
                "tokens_seen": self.tokens_seen,
                "compressions": self.compressions,
            }
        )
        for index, layer in enumerate(self.layers):
            if layer.is_initialized and layer.length:
                keys, values = layer.entries()
                state.tensors[f"layer.{index}.keys"] = copy_of(keys)
                state.tensors[f"layer.{index}.values"] = copy_of(values)
        if self.rounds is not None:
            state.put("rounds", self.rounds.state())
        return state

    @torch.inference_mode()  # the slots may be shared buffers made under inference mode
    def load_state(
        self,
        state: State,
        device: torch.device,
        dtype: torch.dtype,
        layer_devices: list[torch.device] | None = None,
    ) -> None:
        """Hold what :meth:`state` gave, on ``device`` in ``dtype`` (layer ``i`` on
        ``layer_devices[i]`` where given: a model spread over devices keeps each layer's cache on
        that layer's device). The cache must have been made for the same policy kind and number
        of layers."""
        facts = state.facts
        if facts["layers"] != len(self.layers) or facts["policy"]["kind"] != self.policy.kind:
            raise ValueError("the saved cache is for another model or policy")
        self.reset()
        self.policy = CachePolicy(**facts["policy"])
        for index, layer in enumerate(self.layers):
            keys = state.tensor(f"layer.{index}.keys")
            if keys is not None:
                values = state.tensors[f"layer.{index}.values"]
                home = device if layer_devices is None else layer_devices[index]
                layer.restore(keys.to(home, dtype), values.to(home, dtype))
        self.pinned, self.tokens_seen = int(facts["pinned"]), int(facts["tokens_seen"])
        self.compressions = int(facts["compressions"])
        if self.rounds is not None:
            self.rounds.load_state(state.get("rounds"), device)

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
