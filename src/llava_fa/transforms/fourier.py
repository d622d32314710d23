"""A real weight W (m x n: rows = outputs, columns = inputs) to its Fourier spectrum and back.

Every transform is unitary (`norm="ortho"`), so errors keep their size between the domains
(Parseval) and singular values of full spectra equal those of W. Modes:

- `rfft2`: 2-D DFT, half spectrum S = rfft2(W), m x h with h = n//2+1 complex. Columns 0 and, for
  even n, n/2 are "self-conjugate": S[k,c] = conj(S[-k mod m, c]). Of those only rows 0..m//2 are
  stored, and their rows 0 and m/2 (even m) are real. Stored: exactly m*n real degrees of freedom.
- `rfft`: 1-D DFT of each row (along the input axis), m x h complex; each row's columns 0 and n/2
  (even n) are real. Also exactly m*n reals. Inference needs one FFT of the activation and no
  inverse transform.
- `rfft_out`: 1-D DFT of each column (along the output axis), (m//2+1) x n complex; rows 0 and m/2
  (even m) are real. Also exactly m*n reals. Each input column stays a column, so the layer loss
  tr(D H D^T) keeps the same real Hessian H: GPTQ's column loop runs on it unchanged (`fa-gptq`).
- `fft2`: the full m x n complex spectrum, 2*m*n reals (the ablation that ignores the symmetry).
- `none`: W itself, m x n real (the spatial control).

The stored entries are described by two boolean masks over the spectrum grid: `complex` entries
(two reals each) and `real` entries. Their order is row-major (boolean indexing order). For
`rfft`/`rfft2` each complex entry stands for itself and its mirror, so it weighs 2 in Parseval,
and each real entry weighs 1:  ||W||^2 = 2 sum |complex|^2 + sum real^2.  For `fft2` all weigh 1.

Transforms always run in float32/complex64: cuFFT half precision only takes power-of-two sizes,
and LLM widths (576, 1536, 11008) are not.
"""

from __future__ import annotations

import torch

MODES = ("rfft2", "rfft", "rfft_out", "fft2", "none")


def _check(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown transform {mode!r}; use one of {', '.join(MODES)}")


def spectrum_shape(m: int, n: int, mode: str) -> tuple[int, int]:
    _check(mode)
    if mode == "rfft_out":
        return (m // 2 + 1, n)
    return (m, n // 2 + 1) if mode in ("rfft2", "rfft") else (m, n)


def real_rows(m: int, mode: str) -> list[int]:
    """Rows of the `rfft_out` grid that hold real values (DC and, for even m, Nyquist)."""
    return [0] + ([m // 2] if m % 2 == 0 else []) if mode == "rfft_out" else []


def self_conjugate_columns(n: int, mode: str) -> list[int]:
    """Columns of the half spectrum that are their own mirror (DC and, for even n, Nyquist)."""
    if mode not in ("rfft2", "rfft"):
        return []
    return [0] + ([n // 2] if n % 2 == 0 else [])


def entry_weights(mode: str) -> tuple[float, float]:
    """Parseval weight of one stored (complex, real) entry."""
    return (2.0, 1.0) if mode in ("rfft2", "rfft", "rfft_out") else (1.0, 1.0)


def column_weights(m: int, n: int, mode: str, device=None) -> torch.Tensor:
    """Parseval weight of each column of the spectrum grid (for the weighted low-rank fit)."""
    if mode == "rfft_out":
        raise ValueError("rfft_out weighs rows, not columns (it has no low-rank form); use grid_weights")
    h = spectrum_shape(m, n, mode)[1]
    w = torch.full((h,), entry_weights(mode)[0], device=device)
    w[self_conjugate_columns(n, mode)] = 1.0
    return w


def grid_weights(m: int, n: int, mode: str, device=None) -> torch.Tensor:
    """Parseval weight of every entry of the spectrum grid: ||W||^2 = sum w |S|^2."""
    if mode != "rfft_out":
        return column_weights(m, n, mode, device)[None, :].expand(spectrum_shape(m, n, mode))
    w = torch.full(spectrum_shape(m, n, mode), 2.0, device=device)
    w[real_rows(m, mode)] = 1.0
    return w


def row_counts(m: int, n: int, mode: str) -> tuple[list[int], list[int]]:
    """Stored (complex, real) entries in each row of the grid, computed without building masks."""
    _check(mode)
    h = spectrum_shape(m, n, mode)[1]
    s = len(self_conjugate_columns(n, mode))
    if mode == "none":
        return [0] * m, [n] * m
    if mode == "fft2":
        return [n] * m, [0] * m
    if mode == "rfft":
        return [h - s] * m, [s] * m
    if mode == "rfft_out":
        rr = real_rows(m, mode)
        return [0 if k in rr else n for k in range(m // 2 + 1)], [n if k in rr else 0 for k in range(m // 2 + 1)]
    # rfft2: self-conjugate columns keep complex rows 1..(m-1)//2 and real rows 0 and m/2 (even m)
    cplx = [h - s + (s if 1 <= k <= (m - 1) // 2 else 0) for k in range(m)]
    real = [s if (k == 0 or (m % 2 == 0 and k == m // 2)) else 0 for k in range(m)]
    return cplx, real


def stored_masks(m: int, n: int, mode: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (complex, real) masks over the spectrum grid of the entries that are stored."""
    shape = spectrum_shape(m, n, mode)
    cmask = torch.zeros(shape, dtype=torch.bool, device=device)
    rmask = torch.zeros(shape, dtype=torch.bool, device=device)
    sc = self_conjugate_columns(n, mode)
    if mode == "none":
        rmask[:] = True
    elif mode == "fft2":
        cmask[:] = True
    elif mode == "rfft":
        cmask[:] = True
        cmask[:, sc] = False
        rmask[:, sc] = True
    elif mode == "rfft_out":
        cmask[:] = True
        cmask[real_rows(m, mode)] = False
        rmask[real_rows(m, mode)] = True
    else:
        cmask[:] = True
        cmask[:, sc] = False
        cmask[1:(m - 1) // 2 + 1, sc] = True
        for r in [0] + ([m // 2] if m % 2 == 0 else []):
            rmask[r, sc] = True
    return cmask, rmask


def dof(m: int, n: int, mode: str) -> int:
    """Real degrees of freedom of the stored spectrum: m*n except for fft2 (2*m*n)."""
    cplx, real = row_counts(m, n, mode)
    return 2 * sum(cplx) + sum(real)


def forward(W: torch.Tensor, mode: str) -> torch.Tensor:
    """The spectrum grid of a real (m, n) weight (complex64; float32 for `none`)."""
    _check(mode)
    W = W.float()
    if mode == "rfft2":
        return torch.fft.rfft2(W, norm="ortho")
    if mode == "rfft":
        return torch.fft.rfft(W, dim=1, norm="ortho")
    if mode == "rfft_out":
        if W.shape[0] % 2:
            raise ValueError(f"rfft_out needs an even number of rows (outputs), got {W.shape[0]}")
        return torch.fft.rfft(W, dim=0, norm="ortho")
    if mode == "fft2":
        return torch.fft.fft2(W, norm="ortho")
    return W.clone()


def _mirror_rows(v: torch.Tensor) -> torch.Tensor:
    """v[-k mod m] along dim 0."""
    return torch.roll(torch.flip(v, dims=(0,)), 1, dims=0)


def project(S: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """The part of a grid that the inverse transform sees (an orthogonal projection).

    An arbitrary grid (a low-rank product, a residual) is not a valid spectrum of a real matrix:
    for rfft2 the self-conjugate columns are symmetrized, for rfft they are made real, for fft2
    the whole grid is symmetrized. The inverse is then exact and never depends on what a c2r FFT
    library does with invalid input (pocketfft and cuFFT differ there).
    """
    _check(mode)
    if mode == "none":
        return S
    if mode == "fft2":
        mirror = torch.roll(torch.flip(S, dims=(0, 1)), (1, 1), dims=(0, 1))
        return (S + mirror.conj()) / 2
    out = S.clone()
    if mode == "rfft_out":
        for r in real_rows(2 * (S.shape[0] - 1), mode):  # rfft_out needs an even m (checked by its method)
            out[r] = out[r].real.to(S.dtype)
        return out
    for c in self_conjugate_columns(n, mode):
        v = S[:, c]
        out[:, c] = (v + _mirror_rows(v).conj()) / 2 if mode == "rfft2" else v.real.to(S.dtype)
    return out


def inverse(S: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """The real (m, n) weight of a grid (float32); exact inverse of `forward` on valid spectra."""
    _check(mode)
    if mode == "none":
        return S.float()
    S = S.to(torch.complex64)
    if mode == "fft2":
        return torch.fft.ifft2(S, norm="ortho").real
    P = project(S, n, mode)
    if mode == "rfft":
        return torch.fft.irfft(P, n=n, dim=1, norm="ortho")
    if mode == "rfft_out":
        return torch.fft.irfft(P, n=2 * (S.shape[0] - 1), dim=0, norm="ortho")
    return torch.fft.irfft2(P, s=(S.shape[0], n), norm="ortho")


def gather(S: torch.Tensor, n: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored (complex, real) entries of a grid, taken from its projection (what counts)."""
    m = 2 * (S.shape[0] - 1) if mode == "rfft_out" else S.shape[0]
    cmask, rmask = stored_masks(m, n, mode, S.device)
    # rfft's projection only makes its real entries real (taken as .real below) and that of none is S
    # itself: no projected copy of the grid for those (the same values)
    P = S if mode in ("rfft", "none") else project(S, n, mode)
    real = P.masked_select(rmask)
    return P.masked_select(cmask), (real if mode == "none" else real.real).float()


def fill(vc: torch.Tensor | None, vr: torch.Tensor | None, m: int, n: int, mode: str,
         weighted: bool = False) -> torch.Tensor:
    """The grid holding stored entries (zeros elsewhere); inverse of `gather` on valid spectra.

    For rfft2 the rows m//2+1.. of the self-conjugate columns are filled with the conjugate mirror,
    so the grid is a valid spectrum. With `weighted`, entries are multiplied by their Parseval
    weight and the mirror is left empty instead: the form the spectral forward pass multiplies
    with (Re(ifft(column)) of that grid equals ifft of the mirrored column; see formats/fourier.py).
    """
    cmask, rmask = stored_masks(m, n, mode, (vc if vc is not None else vr).device)
    wc, wr = entry_weights(mode)
    if mode == "none":
        G = torch.zeros(cmask.shape, device=cmask.device)
        G[rmask] = vr.float()
        return G
    G = torch.zeros(cmask.shape, dtype=torch.complex64, device=cmask.device)
    # masked_scatter_ / masked_select, not G[mask]: boolean indexing builds the mask's nonzero
    # index, two int64 per entry (the peak of fa's memory on large layers); same order, same values
    if vc is not None:
        G.masked_scatter_(cmask, vc.to(torch.complex64) * wc if weighted else vc.to(torch.complex64))
    if vr is not None and vr.numel():
        G.masked_scatter_(rmask, vr.to(torch.complex64) * wr if weighted else vr.to(torch.complex64))
    if mode == "rfft2" and not weighted:
        rows = torch.arange(m // 2 + 1, m, device=G.device)
        for c in self_conjugate_columns(n, mode):
            G[rows, c] = G[m - rows, c].conj()
    return G


def weighted_norm_sq(vc: torch.Tensor | None, vr: torch.Tensor | None, mode: str) -> torch.Tensor:
    """||W||^2 of the weight whose stored entries are vc, vr (Parseval with the entry weights)."""
    wc, wr = entry_weights(mode)
    total = torch.zeros((), device=(vc if vc is not None else vr).device)
    if vc is not None:
        total = total + wc * vc.abs().pow(2).sum()
    if vr is not None:
        total = total + wr * vr.pow(2).sum()
    return total

