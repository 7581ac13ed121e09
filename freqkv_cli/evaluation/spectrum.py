"""The paper's observation, on the user's model and text: KV energy sits in low DCT frequencies.

For each layer, take the cached keys (un-rotated to before RoPE, as FreqKV compresses them)
and values of a context, apply the orthonormal DCT-II along the positions of every channel,
and report the share of energy in the lowest 10/25/50% of the coefficients, and the error
of FreqKV's low-pass at the chosen ratio.

The DCT is orthonormal, so energies add up (Parseval) and keeping the lowest ``L`` of ``n``
coefficients loses exactly the energy outside them: the relative squared error of the
low-pass, once its ``L`` outputs are brought back to ``n`` positions, is ``1 - share(L/n)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..cache.dct import dct_ortho, idct_ortho, lowpass
from ..cache.policy import CachePolicy
from ..cache.rotary import KeyRotation
from ..engine.chunk_size import DEFAULT_MAX_CHUNK
from ..engine.streaming import ProgressCallback, StreamingEngine

FRACTIONS = (0.10, 0.25, 0.50)  # the low bands reported


@dataclass
class BandEnergy:
    """How one layer's keys or values spread over the DCT coefficients along the sequence."""

    shares: list[float]  # share of the energy in the lowest FRACTIONS of coefficients
    error: float  # relative squared error of the low-pass at the ratio (energy lost)


@dataclass
class LayerSpectrum:
    layer: int
    keys: BandEnergy
    values: BandEnergy


def coefficient_energy(x: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Energy of each DCT coefficient along ``dim``, summed over every other axis: float64 ``(n,)``."""
    coeffs = dct_ortho(x.double(), dim=dim).movedim(dim, 0)
    return coeffs.square().reshape(coeffs.shape[0], -1).sum(dim=1)


def kept_count(n: int, fraction: float) -> int:
    """floor(n * fraction), at least 1: the same rounding as the policy's L = floor(F * r)."""
    return max(1, math.floor(n * fraction))


def low_share(energy: torch.Tensor, fraction: float) -> float:
    """Share of ``energy`` (per coefficient, lowest first) in the lowest ``fraction`` of coefficients."""
    total = float(energy.sum())
    if total == 0.0:
        return 1.0  # an all-zero signal loses nothing
    return float(energy[: kept_count(len(energy), fraction)].sum()) / total


def lowpass_error(x: torch.Tensor, ratio: float, dim: int = -2) -> float:
    """Relative squared error of FreqKV's low-pass of ``x`` to ``floor(n * ratio)`` positions.

    The ``L`` outputs are brought back to ``n`` positions the exact way (DCT, undo the
    ``sqrt(L/n)`` amplitude factor, zero-pad the coefficients, inverse DCT), so what is
    measured is what the operator throws away, computed with the operator itself.
    """
    n = x.shape[dim]
    kept = kept_count(n, ratio)
    exact = x.double()
    low = lowpass(x.float(), kept, dim=dim, method="fft").double()
    coeffs = dct_ortho(low, dim=dim).movedim(dim, -1) * math.sqrt(n / kept)
    back = idct_ortho(F.pad(coeffs, (0, n - kept)), dim=-1).movedim(-1, dim)
    total = float(exact.square().sum())
    return float((exact - back).square().sum()) / total if total else 0.0


def band_energy(x: torch.Tensor, ratio: float, dim: int = -2) -> BandEnergy:
    energy = coefficient_energy(x, dim)
    return BandEnergy([low_share(energy, f) for f in FRACTIONS], lowpass_error(x, ratio, dim))


@torch.inference_mode()
def layer_states(
    model: PreTrainedModel,
    ids: Sequence[int],
    *,
    skip: int = 0,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    on_progress: ProgressCallback | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Read ``ids`` with a full cache; yield each layer's (keys before RoPE, values), float32.

    Shapes ``(1, kv_heads, len(ids) - skip, head_dim)``: positions ``skip ..`` only.
    """
    engine = StreamingEngine(model, CachePolicy(kind="full"), max_chunk=max_chunk)
    engine.feed(list(ids), on_progress=on_progress)
    rotation = KeyRotation(model.model.rotary_emb)
    for index in range(model.config.num_hidden_layers):
        keys, values = engine.cache.entries(index)
        # Entry i of a full cache has RoPE position i.
        positions = torch.arange(keys.shape[-2], device=keys.device)
        yield rotation.unrotate(keys.float(), positions)[:, :, skip:], values[:, :, skip:].float()


def model_spectrum(
    model: PreTrainedModel,
    ids: Sequence[int],
    *,
    ratio: float = 0.5,
    skip: int = 4,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    on_progress: ProgressCallback | None = None,
) -> list[LayerSpectrum]:
    """Per layer band energies of the context ``ids``, over positions ``skip ..``.

    ``skip``: leading positions left out, as FreqKV never compresses its sink tokens (their
    keys are outliers that would add broadband energy the method never sees).
    """
    if len(ids) - skip < 2:
        raise ValueError(f"need at least {skip + 2} tokens, got {len(ids)}")
    states = layer_states(model, ids, skip=skip, max_chunk=max_chunk, on_progress=on_progress)
    return [
        LayerSpectrum(index, band_energy(keys, ratio), band_energy(values, ratio))
        for index, (keys, values) in enumerate(states)
    ]


def spectrum_mean(spectra: Sequence[LayerSpectrum]) -> LayerSpectrum:
    """The plain mean over layers (layer = -1), for a one-line summary."""

    def mean(parts: list[BandEnergy]) -> BandEnergy:
        shares = [sum(p.shares[i] for p in parts) / len(parts) for i in range(len(FRACTIONS))]
        return BandEnergy(shares, sum(p.error for p in parts) / len(parts))

    return LayerSpectrum(-1, mean([s.keys for s in spectra]), mean([s.values for s in spectra]))
