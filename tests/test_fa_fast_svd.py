"""The randomized truncated SVD of `fa` (methods/fa/lowrank.py): subspace, determinism, warm start, fit quality."""

import pytest
import torch

from llava_fa.errors import ConfigError
from llava_fa.methods import build_config
from llava_fa.methods.fa import fit_layer, fourier_svd
from llava_fa.methods.fa.budget import plan_layer
from llava_fa.methods.fa.lowrank import randomized_svd, use_randomized
from llava_fa.transforms import fourier as ft

pytestmark = pytest.mark.usefixtures("one_thread")


def _gapped(m, h, rank, dtype, seed=0):
    """A matrix whose top `rank` singular values (10..5) stand far above the rest (0.3)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, h, generator=g, dtype=dtype)).Q
    V = torch.linalg.qr(torch.randn(h, h, generator=g, dtype=dtype)).Q
    s = torch.cat([torch.linspace(10, 5, rank), torch.full((h - rank,), 0.3)])
    return (U * s.to(dtype)) @ V.mH


def _weighted_err(R, A, B, w):
    return ((R - A.T @ B).abs() ** 2 * w).sum().sqrt().item()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32])
def test_randomized_matches_the_exact_top_subspace(dtype):
    m, h, rank = 160, 120, 6
    w = torch.full((h,), 2.0)
    w[[0, h - 1]] = 1.0  # the Parseval weights of a half spectrum
    R = _gapped(m, h, rank, dtype) / w.sqrt()  # so that the weighted matrix has the gap
    assert use_randomized(rank, m, h)
    A_exact, B_exact = fourier_svd(R, rank, w, svd="exact")
    A_fast, B_fast = fourier_svd(R, rank, w, svd="randomized", power_iters=2)
    assert A_fast.dtype == dtype and A_fast.shape == (rank, m) and B_fast.shape == (rank, h)
    # the same rank-r product (the factors themselves are unique only up to a phase per component)
    prod_exact, prod_fast = A_exact.T @ B_exact, A_fast.T @ B_fast
    assert ((prod_fast - prod_exact).norm() / prod_exact.norm()).item() < 1e-4
    # and the left subspaces agree
    U = torch.linalg.qr(A_exact.T).Q
    Uf = torch.linalg.qr(A_fast.T).Q
    assert (Uf - U @ (U.mH @ Uf)).norm().item() < 1e-3


def test_randomized_is_deterministic_and_independent_of_the_global_rng():
    R = _gapped(200, 150, 8, torch.complex64, seed=1) + 0.1 * torch.randn(200, 150, dtype=torch.complex64)
    torch.manual_seed(1)
    first = fourier_svd(R, 8, svd="randomized", power_iters=1)
    torch.manual_seed(2)
    second = fourier_svd(R, 8, svd="randomized", power_iters=1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_warm_start_is_no_worse_than_cold():
    g = torch.Generator().manual_seed(3)
    # slowly decaying spectrum: one power iteration alone does not find the top subspace
    m, h, rank = 240, 180, 10
    U = torch.linalg.qr(torch.randn(m, h, generator=g, dtype=torch.complex64)).Q
    V = torch.linalg.qr(torch.randn(h, h, generator=g, dtype=torch.complex64)).Q
    R = (U * torch.logspace(0, -1, h).to(torch.complex64)) @ V.mH
    w = torch.ones(h)
    _, B_prev = fourier_svd(R, rank, w, svd="exact")
    # the next alternation's residual moves a little
    R2 = R + 0.003 * torch.randn(m, h, generator=g, dtype=torch.complex64)
    best = _weighted_err(R2, *fourier_svd(R2, rank, w, svd="exact"), w)
    cold = _weighted_err(R2, *fourier_svd(R2, rank, w, svd="randomized", power_iters=1), w)
    warm = _weighted_err(R2, *fourier_svd(R2, rank, w, svd="randomized", power_iters=1, start=B_prev), w)
    assert best <= warm * (1 + 1e-5) and warm <= cold
    assert warm / best < 1.001


def test_rank_near_full_falls_back_to_exact():
    R = torch.randn(40, 30, dtype=torch.complex64)
    assert not use_randomized(10, 40, 30)
    exact = fourier_svd(R, 10, svd="exact")
    fast = fourier_svd(R, 10, svd="randomized")
    assert all(torch.equal(a, b) for a, b in zip(exact, fast))
    U, s, Vh = randomized_svd(R, 20, power_iters=0)  # 20 + 12 probes clamp to all 30 columns: exact
    torch.testing.assert_close(s, torch.linalg.svdvals(R), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", [4, 12])
def test_fit_layer_randomized_within_one_percent_of_exact(rank):
    g = torch.Generator().manual_seed(4)
    m, n = 192, 256
    W = (torch.randn(m, 12, generator=g) * torch.linspace(1, 0.1, 12)) @ torch.randn(12, n, generator=g) * 0.05
    W += 0.02 * torch.randn(m, n, generator=g)
    W[:, 5] *= 6
    params = plan_layer(build_config("fa", {"rank": rank, "odc": "off"}), m, n)
    assert use_randomized(rank, *ft.spectrum_shape(m, n, "rfft2"))
    exact = fit_layer(W, params, iters=3, svd="exact")
    fast = fit_layer(W, params, iters=3, svd="randomized", power_iters=1)
    assert min(fast.history) <= 1.01 * min(exact.history)


def test_config_option_and_validation():
    assert build_config("fa", {}).svd == "randomized"
    assert build_config("fa", {"svd": "exact", "svd_power_iters": 0}).svd == "exact"
    with pytest.raises(ConfigError, match="svd"):
        build_config("fa", {"svd": "lanczos"})
    with pytest.raises(ConfigError, match="svd-power-iters"):
        build_config("fa", {"svd_power_iters": -1})
    with pytest.raises(ValueError, match="svd must be"):
        fourier_svd(torch.randn(8, 8), 2, svd="lanczos")
