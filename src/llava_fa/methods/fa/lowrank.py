"""FourierSVD: the truncated SVD of a spectrum grid, weighted so that it minimizes the weight error."""

from __future__ import annotations

import torch


def fourier_svd(R: torch.Tensor, rank: int, col_weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors A (rank, m), B (rank, h) with A^T B the best rank-`rank` approximation of R in the
    norm sum_c w_c ||R[:, c]||^2.

    With w_c the Parseval weights of the half spectrum (2, or 1 on self-conjugate columns) that norm
    is ||W - W_hat||^2 of the real weight (an upper bound on self-conjugate columns, where only the
    symmetric part of the product reaches W). Scaling columns by sqrt(w) makes it a plain SVD.
    Complex64 for spectra, float32 for the spatial control. sqrt(s) goes to each factor, so both
    have rows of comparable size for per-component quantization.
    """
    sw = None if col_weights is None else col_weights.sqrt().to(R.device)
    Rw = R if sw is None else R * sw
    U, s, Vh = torch.linalg.svd(Rw, full_matrices=False)
    root = s[:rank].sqrt().to(U.dtype)
    A = (U[:, :rank] * root).T
    B = root[:, None] * Vh[:rank]
    if sw is not None:
        B = B / sw
    return A.contiguous(), B.contiguous()
