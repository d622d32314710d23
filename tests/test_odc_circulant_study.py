"""The helpers of scripts/odc_circulant_study.py (ODC option B): the circulant projection and the
spectral-column emulation, which with flat weights must be exactly the library's ODC-off fit."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from odc_circulant_study import nearest_circulant, option_b  # noqa: E402

from llava_fa.methods import build_config, get_method  # noqa: E402


def circulant(c: torch.Tensor) -> torch.Tensor:
    n = c.numel()
    idx = torch.arange(n)
    return c[(idx[None, :] - idx[:, None]) % n]


def test_nearest_circulant_is_an_orthogonal_projection():
    torch.manual_seed(0)
    c = torch.randn(12, dtype=torch.float64)
    torch.testing.assert_close(nearest_circulant(circulant(c)), c)  # a circulant is its own projection
    X = torch.randn(40, 12, dtype=torch.float64)
    H = X.T @ X
    C = circulant(nearest_circulant(H))
    torch.testing.assert_close((H - C).pow(2).sum() + C.pow(2).sum(), H.pow(2).sum())
    eig = torch.linalg.eigvalsh(C)
    lam = torch.fft.fft(nearest_circulant(H)).real
    torch.testing.assert_close(eig.sort().values, lam.sort().values)  # its eigenvalues are the DFT of its row


def test_flat_weights_give_the_library_fit_without_odc():
    torch.manual_seed(0)
    W = torch.randn(64, 96)
    layer = get_method("fa")(build_config("fa", {"structure": "quant", "odc": "off"})).compress(W, None)
    torch.testing.assert_close(option_b(W, layer, torch.ones(96), 0.5), layer.dequantize(), rtol=0, atol=0)
