"""The FreqKV frequency operator: low-pass a segment along its sequence axis.

For a segment ``x`` of ``n`` positions and a kept length ``L``::

    X  = DCT-II_ortho(x)                  along positions
    x' = DCT-III_ortho(X[:L]) * sqrt(L/n)  L positions

The map is linear and fixed, so it is one ``L x n`` matrix. Two ways to apply it,
with identical results up to rounding:

- ``fft``: Makhoul's FFT form of the DCT. O(n log n); the fastest on CPUs.
- ``matrix``: one cached ``L x n`` float32 matmul. On GPUs one large matmul beats
  a chain of FFT kernels.

The arithmetic is float32 whatever the input dtype; the result has the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch

_HOLDERS: list[list[torch.Tensor]] = []


@contextmanager
def holding() -> Iterator[list[torch.Tensor]]:
    """Collects the cached tables and matrices used inside, for whoever keeps the list to keep
    them alive: a CUDA graph captured inside reads their memory at every replay, and the
    bounded caches below may evict one (and free its memory) long before the graph goes."""
    held: list[torch.Tensor] = []
    _HOLDERS.append(held)
    try:
        yield held
    finally:
        _HOLDERS.pop()


def clear_cached() -> None:
    """Drop the cached tables and matrices (benchmarks time building them)."""
    _twiddles.cache_clear()
    _lowpass_matrix.cache_clear()


def _hold(*tensors: torch.Tensor) -> None:
    if _HOLDERS:
        _HOLDERS[-1].extend(tensors)


@lru_cache(maxsize=64)
def _twiddles(
    n: int, count: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of pi*k/(2n) for k < count."""
    # Cached tables must be ordinary tensors: one made under inference_mode (the engine)
    # could not be saved for backward later (fine-tuning in the same process).
    with torch.inference_mode(False):
        angle = torch.arange(count, dtype=torch.float64) * (math.pi / (2 * n))
        return angle.cos().to(device, dtype), angle.sin().to(device, dtype)


def _ortho_scale(count: int, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    scale = torch.full((count,), math.sqrt(1.0 / (2 * n)), device=device, dtype=dtype)
    scale[0] = math.sqrt(1.0 / (4 * n))
    return scale


def dct_ortho(x: torch.Tensor, dim: int = -1, keep: int | None = None) -> torch.Tensor:
    """Orthonormal DCT-II along ``dim`` (as ``scipy.fft.dct(x, type=2, norm='ortho')``).

    ``keep`` returns only the first ``keep`` coefficients (cheaper when it is at most n/2+1).
    """
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    keep = n if keep is None else keep
    # Makhoul: even samples forward, odd samples backward, then one real FFT.
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    half = torch.fft.rfft(v, dim=-1)  # k = 0 .. n//2
    if keep > half.shape[-1]:  # the rest follows from Hermitian symmetry: V[n-k] = conj(V[k])
        half = torch.cat([half, half[..., 1 : (n + 1) // 2].flip(-1).conj()], dim=-1)
    spectrum = half[..., :keep]
    cos, sin = _twiddles(n, keep, x.device, x.dtype)
    _hold(cos, sin)
    # Re(exp(-i*theta) * V) = cos*Re(V) + sin*Im(V)
    out = 2.0 * (spectrum.real * cos + spectrum.imag * sin)
    return (out * _ortho_scale(keep, n, x.device, x.dtype)).movedim(-1, dim)


def idct_ortho(coeffs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Orthonormal inverse of :func:`dct_ortho` (DCT-III) along ``dim``; output length = input length."""
    y = coeffs.movedim(dim, -1)
    n = y.shape[-1]
    y = y / _ortho_scale(n, n, y.device, y.dtype)  # back to unnormalised DCT-II coefficients
    count = n // 2 + 1
    a = y[..., :count]
    # b_k = -y[n-k] for k >= 1, with y[n] = 0 for k = 0
    b = -torch.cat([torch.zeros_like(y[..., :1]), y.flip(-1)[..., : count - 1]], dim=-1)
    cos, sin = _twiddles(n, count, y.device, y.dtype)
    _hold(cos, sin)
    # V_k = (a + i b) * exp(i*theta) / 2: only k <= n//2 is needed by the inverse real FFT
    spectrum = torch.complex((a * cos - b * sin) / 2.0, (a * sin + b * cos) / 2.0)
    v = torch.fft.irfft(spectrum, n=n, dim=-1)
    out = torch.empty_like(v)
    half = (n + 1) // 2
    out[..., ::2] = v[..., :half]
    out[..., 1::2] = v[..., half:].flip(-1)
    return out.movedim(-1, dim)


def _check_lengths(n: int, kept: int) -> None:
    if not 0 < kept <= n:
        raise ValueError(f"kept length must be in 1..{n}, got {kept}")


def lowpass_fft(x: torch.Tensor, kept: int, dim: int = -2) -> torch.Tensor:
    """Compress ``n`` positions of ``x`` along ``dim`` to ``kept`` with FFTs (float32 inside)."""
    n = x.shape[dim]
    _check_lengths(n, kept)
    # FFTs along a contiguous last axis are ~1.5x faster than along a strided one.
    x32 = x.to(torch.float32).movedim(dim, -1).contiguous()
    coeffs = dct_ortho(x32, dim=-1, keep=kept)
    out = idct_ortho(coeffs, dim=-1) * math.sqrt(kept / n)
    return out.movedim(-1, dim).to(x.dtype)


def lowpass_matrix(
    n: int, kept: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The ``kept x n`` matrix of the operator in ``dtype``, built once per (n, kept, device, dtype)."""
    matrix = _lowpass_matrix(n, kept, device, dtype)
    _hold(matrix)
    return matrix


@lru_cache(maxsize=64)
def _lowpass_matrix(n: int, kept: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    _check_lengths(n, kept)
    with torch.inference_mode(False), torch.no_grad():  # an ordinary tensor, see _twiddles
        eye = torch.eye(n, dtype=torch.float64)
        # Columns of the operator are the images of the unit vectors; float64 for an exact basis.
        coeffs = dct_ortho(eye, dim=0)[:kept]
        matrix = idct_ortho(coeffs, dim=0) * math.sqrt(kept / n)
        return matrix.to(device=device, dtype=dtype)


def lowpass_matmul(x: torch.Tensor, kept: int, dim: int = -2, tf32: bool = False) -> torch.Tensor:
    """Compress ``n`` positions of ``x`` along ``dim`` to ``kept`` with one cached matmul.

    ``tf32`` lets CUDA run this one float32 matmul on tensor cores. Meant for 16-bit caches:
    their values are exact in TF32 and the result is rounded to 16 bits again, so the
    operator's TF32 error (~3e-4 relative) stays under the storage rounding (~4e-3 for bf16).
    """
    n = x.shape[dim]
    matrix = lowpass_matrix(n, kept, x.device)
    # One 2-D product (kept x n) @ (n x everything else): a batched product with the matrix
    # broadcast ran 10x slower on an H200 (an sm80 kernel at 28 TFLOP/s, measured).
    moved = x.movedim(dim, 0)
    flat = moved.reshape(n, -1).to(torch.float32)
    if tf32 and x.device.type == "cuda":
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True  # only around this matmul: RoPE must stay float32
        try:
            out = matrix @ flat
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    else:
        out = matrix @ flat
    return out.reshape(kept, *moved.shape[1:]).movedim(0, dim).to(x.dtype)


def lowpass(
    x: torch.Tensor, kept: int, dim: int = -2, method: str = "auto", tf32: bool = False
) -> torch.Tensor:
    """Keep the ``kept`` lowest DCT frequencies of ``x`` along ``dim``, rescaled by ``sqrt(kept/n)``.

    ``x``: any shape, e.g. ``(batch, heads, n, head_dim)`` with ``dim=-2``.
    Returns the same shape with ``n`` replaced by ``kept``, in ``x.dtype``.
    ``method``: ``"fft"``, ``"matrix"`` or ``"auto"`` (matrix on accelerators, FFT on CPU:
    see docs/BENCHMARKS.md for the measurement behind the choice). ``tf32``: see
    :func:`lowpass_matmul`.
    """
    if method == "auto":
        # Measured (docs/BENCHMARKS.md): FFT on CPUs always; on GPUs the matrix, except a
        # float32 matmul (no TF32) at n >= 4092, where the FFT is 1.35-2x faster.
        long_fp32 = not tf32 and x.shape[dim] >= 4092
        method = "fft" if x.device.type == "cpu" or long_fp32 else "matrix"
    if method == "fft":
        return lowpass_fft(x, kept, dim)
    if method == "matrix":
        return lowpass_matmul(x, kept, dim, tf32=tf32)
    raise ValueError(f"unknown lowpass method {method!r}: use 'fft', 'matrix' or 'auto'")
