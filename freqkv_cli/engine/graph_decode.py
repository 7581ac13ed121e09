"""Decode as a replayed CUDA graph: one token in, the next token's logits out.

Once a window exists every decode step has the same shapes: the token ``(1, 1)``, its
position, and attention over the window's ``N`` slots with a mask that hides the slots past
the position. The step writes its key and value in place at the position (a device tensor),
so one captured graph serves every token, across compression rounds, resets, new questions
and loaded memories, as long as the slots stay where they were (:class:`..cache.buffers.
SlotBuffers`). Capture happens on the first decode step; a new address re-captures.

Without CUDA (or with ``capture=False``) the same static-shape step runs eagerly: what the
tests on CPUs check against the engine's plain decode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from ..cache.buffers import SlotBuffers
from ..cache.graph_capture import capture
from ..cache.window_cache import WindowedCache
from . import slot_attention
from .attention_kernels import attention_kernels, attention_named

logger = logging.getLogger(__name__)


class SlotWriter(Cache):
    """The cache a static decode step sees: every layer's whole window ``(B, Hkv, N, D)``, the
    new key and value written at ``slot`` ``(1,)`` (a device tensor: a replay writes where the
    position says, not where it said when captured)."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], slot: torch.Tensor) -> None:
        super().__init__(layers=[])
        self.pairs = pairs
        self.slot = slot

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: object,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.pairs[layer_idx]
        keys.index_copy_(2, self.slot, key_states)
        values.index_copy_(2, self.slot, value_states)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always given


@dataclass
class StaticInputs:
    """The tensors a captured step reads and writes; a replay sees new values, same addresses."""

    token: torch.Tensor  # (1, 1) long
    position: torch.Tensor  # (1, 1) long: the slot the token goes to, its RoPE position
    slots: torch.Tensor  # (N,) long: 0 .. N - 1
    hidden: torch.Tensor | None = None  # (1, 1, D) the step's last hidden state
    logits: torch.Tensor | None = None  # (1, vocab) float32

    @classmethod
    def make(cls, window: int, device: torch.device) -> StaticInputs:
        return cls(
            token=torch.zeros((1, 1), dtype=torch.long, device=device),
            position=torch.zeros((1, 1), dtype=torch.long, device=device),
            slots=torch.arange(window, device=device),
        )


@dataclass
class GraphDecoder:
    """Single-token steps over a windowed cache's slots, replayed as one CUDA graph.

    ``model``: the causal LM (``.model``, ``.lm_head``); ``buffers``: the slots the engine's
    caches write. ``capture``: None = on CUDA devices only. ``compile``: fuse the step's small
    kernels with ``torch.compile`` before capturing (a graph of a 30-layer model is ~1,200
    kernels otherwise, most of them a few elementwise operations each).
    """

    model: PreTrainedModel
    buffers: SlotBuffers
    capture: bool | None = None
    compile: bool = False
    compiled: object | None = field(default=None, init=False)
    inputs: StaticInputs | None = field(default=None, init=False)
    graph: torch.cuda.CUDAGraph | None = field(default=None, init=False)
    captured_for: tuple | None = field(default=None, init=False)  # what the graph's addresses are
    failed: bool = field(default=False, init=False)  # capture failed once: eager steps from then on

    @staticmethod
    def suits(model: PreTrainedModel) -> bool:
        """A model on one CUDA device, without dispatch hooks moving weights in the step."""
        devices = {p.device for p in model.parameters()}
        spread = len(set(getattr(model, "hf_device_map", {}).values() or [0])) > 1
        return len(devices) == 1 and next(iter(devices)).type == "cuda" and not spread

    def accepts(self, cache: WindowedCache) -> bool:
        """Whether this cache's next decode step can run here: windowed, in these buffers."""
        if cache.rounds is None or cache.length == 0:
            return False
        return all(
            layer.buffers is self.buffers and layer.is_initialized and layer.length == cache.length
            for layer in cache.layers
        )

    @torch.inference_mode()
    def step(self, cache: WindowedCache, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``token`` at slot ``cache.length`` (< window); returns copies of its hidden
        state ``(1, 1, D)`` and the next token's float32 logits ``(1, vocab)``."""
        window = cache.policy.window
        device = cache.layers[0].keys.device
        if self.inputs is None or self.inputs.slots.shape[0] != window or self.inputs.slots.device != device:
            self.inputs, self.graph, self.captured_for = StaticInputs.make(window, device), None, None
        inputs = self.inputs
        inputs.token.fill_(token)
        inputs.position.fill_(cache.length)
        capture = self.capture if self.capture is not None else device.type == "cuda"
        if capture and not self.failed:
            key = (self.buffers.generation, window, device, cache.layers[0].keys.dtype)
            if self.graph is None or self.captured_for != key:
                self._capture(cache, key)
        if self.graph is not None and not self.failed:
            self.graph.replay()
        else:
            self._run(cache)
        cache.appended(1)
        assert inputs.hidden is not None and inputs.logits is not None
        return inputs.hidden.clone(), inputs.logits.clone()

    def _forward(self, token: torch.Tensor, position: torch.Tensor, slots: torch.Tensor, writer: SlotWriter):
        mask = (slots <= position).view(1, 1, 1, -1)  # (1, 1, 1, N) True = attend
        with attention_named(self.model.config, slot_attention.NAME):
            out = self.model.model(
                input_ids=token,
                position_ids=position,
                attention_mask=mask,
                past_key_values=writer,
                use_cache=True,
            )
        hidden = out.last_hidden_state
        return hidden, self.model.lm_head(hidden[:, -1]).float()

    def _run(self, cache: WindowedCache) -> None:
        """The step itself: what is captured, or run as it is."""
        inputs = self.inputs
        assert inputs is not None
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
        forward = self._forward
        if self.compile:
            if self.compiled is None:
                self.compiled = torch.compile(self._forward, dynamic=False)
            forward = self.compiled  # type: ignore[assignment]
        with attention_kernels(inputs.token.device, 1):
            hidden, logits = forward(
                inputs.token, inputs.position, inputs.slots, SlotWriter(pairs, inputs.position[0])
            )
        if inputs.hidden is None or inputs.hidden.shape != hidden.shape:
            inputs.hidden, inputs.logits = hidden.clone(), logits.clone()
        else:  # the same output tensors every run: a replay writes them
            inputs.hidden.copy_(hidden)
            inputs.logits.copy_(logits)

    def _capture(self, cache: WindowedCache, key: tuple) -> None:
        # The warm-up runs write this step's key and value into the slot the replay writes
        # again, so they change nothing.
        try:
            graph = capture(lambda: self._run(cache))
        except Exception as exc:  # a model whose step syncs with the host, say: decode eagerly
            if self.compile:  # try again without fusing first
                logger.debug("compiled decode graph failed, capturing it uncompiled: %s", exc)
                self.compile, self.compiled = False, None
                self._capture(cache, key)
                return
            logger.debug("decode graph capture failed, decoding eagerly: %s", exc)
            self.failed, self.graph = True, None
            return
        self.graph, self.captured_for = graph, key
