"""The Fourier transforms of LLaVA-FA: exact inverse, Parseval, the stored half spectrum."""

import pytest
import torch

from llava_fa.transforms import fourier as ft

SHAPES = [(6, 8), (5, 7), (6, 7), (5, 8), (1, 1), (2, 2), (1, 4), (3, 1), (16, 12)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode", ft.MODES)
@pytest.mark.parametrize("m,n", SHAPES)
def test_round_trip_parseval_and_stored_entries(m, n, mode):
    W = torch.randn(m, n, generator=torch.Generator().manual_seed(m * 31 + n))
    if mode == "rfft_out" and m % 2:
        with pytest.raises(ValueError, match="even number of rows"):
            ft.forward(W, mode)
        return
    S = ft.forward(W, mode)
    assert S.shape == ft.spectrum_shape(m, n, mode)
    assert (ft.inverse(S, n, mode) - W).norm() <= 1e-6 * W.norm()
    # the stored entries alone rebuild W
    vc, vr = ft.gather(S, n, mode)
    assert (ft.inverse(ft.fill(vc, vr, m, n, mode), n, mode) - W).norm() <= 1e-6 * W.norm()
    # Parseval with the half-spectrum weights: 2 per stored complex entry, 1 per real entry
    assert ft.weighted_norm_sq(vc, vr, mode).sqrt() == pytest.approx(W.norm().item(), rel=1e-6)
    # the same on the grid: columns weigh 2, self-conjugate columns 1 (their full column)
    if mode != "none":
        w = ft.grid_weights(m, n, mode)
        assert (S.abs().pow(2) * w).sum().sqrt() == pytest.approx(W.norm().item(), rel=1e-6)
    # degrees of freedom stored: exactly m*n, except the full fft2 spectrum
    assert 2 * vc.numel() * (mode != "none") + vr.numel() == ft.dof(m, n, mode)
    assert ft.dof(m, n, mode) == (2 * m * n if mode == "fft2" else m * n)


@pytest.mark.parametrize("mode", ft.MODES)
@pytest.mark.parametrize("m,n", SHAPES)
def test_masks_match_counts(m, n, mode):
    cmask, rmask = ft.stored_masks(m, n, mode)
    assert not (cmask & rmask).any()
    cplx, real = ft.row_counts(m, n, mode)
    assert cmask.sum(1).tolist() == cplx and rmask.sum(1).tolist() == real


def test_self_conjugate_columns_are_stored_without_waste():
    m, n = 6, 8
    W = torch.randn(m, n)
    S = ft.forward(W, "rfft2")
    for c in (0, n // 2):  # F[k, c] = conj(F[-k, c]); rows 0 and m/2 real
        torch.testing.assert_close(S[1:, c], S[1:, c].flip(0).conj())
        assert S[0, c].imag.abs() < 1e-6 and S[m // 2, c].imag.abs() < 1e-6
    cmask, rmask = ft.stored_masks(m, n, "rfft2")
    assert cmask[:, 0].nonzero().flatten().tolist() == [1, 2]  # rows 1..(m-1)//2
    assert rmask[:, 0].nonzero().flatten().tolist() == [0, 3]  # rows 0 and m/2
    assert not cmask[4:, 0].any() and not rmask[4:, 0].any()  # the mirror is not stored


@pytest.mark.parametrize("mode", ["rfft2", "rfft", "fft2"])
def test_projection_is_what_the_inverse_sees(mode):
    m, n = 7, 10
    G = torch.randn(*ft.spectrum_shape(m, n, mode), dtype=torch.complex64)  # not a valid spectrum
    P = ft.project(G, n, mode)
    torch.testing.assert_close(ft.project(P, n, mode), P)  # idempotent
    torch.testing.assert_close(ft.inverse(P, n, mode), ft.inverse(G, n, mode))
    torch.testing.assert_close(ft.forward(ft.inverse(G, n, mode), mode), P, atol=1e-5, rtol=1e-5)


def test_unitary_transforms_keep_full_spectrum_singular_values():
    W = torch.randn(12, 9)
    s = torch.linalg.svdvals(W)
    torch.testing.assert_close(torch.linalg.svdvals(ft.forward(W, "fft2")), s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(torch.fft.fft(W.to(torch.complex64), dim=1, norm="ortho")), s,
                               atol=1e-5, rtol=1e-5)
