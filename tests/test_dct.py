"""The frequency operator against scipy's DCT, and its defining properties."""

import math

import numpy as np
import pytest
import scipy.fft
import torch

from freqkv_cli.cache.dct import clear_cached, dct_ortho, holding, idct_ortho, lowpass, lowpass_matrix


def scipy_lowpass(x: np.ndarray, kept: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    coeffs = scipy.fft.dct(x, type=2, norm="ortho", axis=axis)
    coeffs = np.take(coeffs, np.arange(kept), axis=axis)
    return scipy.fft.idct(coeffs, type=2, norm="ortho", axis=axis) * math.sqrt(kept / n)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 63, 64, 257, 1000])
def test_dct_and_inverse_match_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n, 5))
    got = dct_ortho(torch.from_numpy(x), dim=1).numpy()
    np.testing.assert_allclose(got, scipy.fft.dct(x, type=2, norm="ortho", axis=1), atol=1e-10)
    got = idct_ortho(torch.from_numpy(x), dim=1).numpy()
    np.testing.assert_allclose(got, scipy.fft.idct(x, type=2, norm="ortho", axis=1), atol=1e-10)
    for keep in {1, (n + 1) // 2, n}:
        partial = dct_ortho(torch.from_numpy(x), dim=1, keep=keep).numpy()
        np.testing.assert_allclose(
            partial, scipy.fft.dct(x, type=2, norm="ortho", axis=1)[:, :keep], atol=1e-10
        )


@pytest.mark.parametrize("method", ["fft", "matrix"])
@pytest.mark.parametrize(("n", "kept"), [(10, 5), (11, 5), (64, 31), (300, 150), (4092, 2046), (7, 6)])
def test_lowpass_matches_scipy(method: str, n: int, kept: int) -> None:
    rng = np.random.default_rng(kept)
    x = rng.standard_normal((2, 3, n, 8)).astype(np.float32)
    got = lowpass(torch.from_numpy(x), kept, dim=-2, method=method).numpy()
    want = scipy_lowpass(x.astype(np.float64), kept, axis=-2)
    assert got.shape == (2, 3, kept, 8)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["fft", "matrix"])
def test_keeping_everything_returns_the_input(method: str) -> None:
    x = torch.randn(2, 50, 7)
    torch.testing.assert_close(lowpass(x, 50, dim=1, method=method), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["fft", "matrix"])
def test_constant_channel_keeps_its_amplitude(method: str) -> None:
    x = torch.full((1, 1, 4096, 4), 3.25)
    y = lowpass(x, 1024, method=method)
    torch.testing.assert_close(y, torch.full_like(y, 3.25), atol=1e-4, rtol=1e-4)


def test_smooth_signal_keeps_energy() -> None:
    n = 2048
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    x = torch.stack([torch.sin(2 * math.pi * 3 * t) + 0.5 * torch.cos(2 * math.pi * 7 * t), t**2], dim=-1)
    coeffs = dct_ortho(x, dim=0)
    energy = (coeffs[: n // 2] ** 2).sum(0) / (coeffs**2).sum(0)
    assert bool((energy >= 0.99).all()), energy
    # The compressed signal is the same curve sampled half as densely: point j sits
    # between original points 2j and 2j+1 (away from the edges, where the DCT rings a little).
    y = lowpass(x.float(), n // 2, dim=0).double()
    midpoints = (x[0::2] + x[1::2]) / 2
    assert y.shape == (n // 2, 2)
    assert (y[50:-50] - midpoints[50:-50]).abs().max() < 1e-2


def test_bf16_input_computes_in_float32() -> None:
    x = torch.randn(1, 2, 512, 16)
    exact = lowpass(x, 256)
    low = lowpass(x.to(torch.bfloat16), 256)
    assert low.dtype == torch.bfloat16
    # only the input and output roundings remain (bf16 has 8 bits of mantissa)
    assert (low.float() - exact).abs().max() < 0.05


def test_matrix_is_cached_and_bad_lengths_are_refused() -> None:
    assert lowpass_matrix(20, 10, "cpu") is lowpass_matrix(20, 10, "cpu")
    with pytest.raises(ValueError):
        lowpass(torch.randn(4, 3), 5, dim=0)
    with pytest.raises(ValueError):
        lowpass(torch.randn(4, 3), 0, dim=0)


@pytest.mark.parametrize("method", ["matrix", "fft"])
def test_holding_keeps_the_cached_operators_a_capture_reads(method: str) -> None:
    """What a CUDA graph captured inside ``holding()`` reads stays alive with the list, even
    after the bounded caches drop it."""
    x = torch.randn(2, 3, 40, 8, dtype=torch.float64)
    with holding() as held:
        want = lowpass(x, 20, -2, method)
    assert held and all(isinstance(t, torch.Tensor) for t in held)
    if method == "matrix":
        assert any(t is lowpass_matrix(40, 20, x.device) for t in held)
    ids = {id(t) for t in held}
    clear_cached()
    with holding() as again:
        torch.testing.assert_close(lowpass(x, 20, -2, method), want)
    assert not ids & {id(t) for t in again}  # built anew: the held ones were dropped from the cache
    assert all(t.numel() for t in held)  # and are still there, whole
    with holding() as outer, holding() as inner:
        lowpass(x, 20, -2, method)
    assert inner and not outer  # the innermost holder collects
