"""FourierSVD: the truncated SVD of a spectrum grid, weighted so that it minimizes the weight error.

Two ways to get the top `rank` triplets:
- exact: a full `torch.linalg.svd`, then truncated: O(m h min(m, h)), run `iters` times by the
  alternation of fit.py (a 4096x11008 layer took 13.8 s to fit on an H200, 1.0 s without it);
- randomized: the range finder of Halko, Martinsson and Tropp (2011, algorithms 4.4 and 5.1) with
  k = rank + oversampling(rank) probes and q = `power_iters` power iterations (O(m h k (2 q + 2))).
  It can start from the previous alternation's right basis: S - Q moves little from one alternation
  to the next, so that subspace is already close and the power iterations go on refining it.
"""

from __future__ import annotations

import torch

SVD_KINDS = ("randomized", "exact")
# Extra probes beyond the rank: the captured subspace converges like (s_{k+1}/s_r)^(2q+1) with
# k = rank + oversampling, and the spectra of real weights (plus the codes' noise in S - Q) decay
# slowly, so s_{k+1}/s_r only drops well below 1 when k grows with the rank: at least
# MIN_OVERSAMPLE, else half the rank (rank 64 on SmolLM2 layers: 1.3% above the exact fit's error
# with 12 extra probes, 0.6% with 32, at 3 power iterations).
MIN_OVERSAMPLE = 12


def oversampling(rank: int) -> int:
    return max(MIN_OVERSAMPLE, rank // 2)


# The probes come from a generator seeded by this constant: the same input gives bit-identical
# factors on the same device, run after run (no dependence on the global RNG state).
PROBE_SEED = 0x5F3759DF


def fourier_svd(R: torch.Tensor, rank: int, col_weights: torch.Tensor | None = None, svd: str = "exact",
                power_iters: int = 3, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors A (rank, m), B (rank, h) with A^T B the best rank-`rank` approximation of R in the
    norm sum_c w_c ||R[:, c]||^2.

    With w_c the Parseval weights of the half spectrum (2, or 1 on self-conjugate columns) that norm
    is ||W - W_hat||^2 of the real weight (an upper bound on self-conjugate columns, where only the
    symmetric part of the product reaches W). Scaling columns by sqrt(w) makes it a plain SVD.
    Complex64 for spectra, float32 for the spatial control. sqrt(s) goes to each factor, so both
    have rows of comparable size for per-component quantization.

    `svd` "randomized" computes only the top triplets (`randomized_svd`); `start` is a previous B
    (any number of rows, in the same unweighted column coordinates) whose row space seeds the range
    finder. Where the rank is close to min(m, h) the randomized way saves nothing and the exact
    SVD is used instead.
    """
    solver = WarmSVD(col_weights, svd, power_iters)
    if start is not None:
        # B = sqrt(s) Vh / sw, so the previous right singular vectors in weighted coordinates are B * sw.
        sw = _root_weights(col_weights, R.device)
        solver.basis = start.to(R.device) if sw is None else start.to(R.device) * sw
    return solver(R, rank)


class WarmSVD:
    """`fourier_svd` over a sequence of slowly changing grids (the alternation's S - Q): each call
    starts from the whole probed right basis of the previous one (k = rank + oversampling rows, not
    only the rank kept), so successive calls continue one subspace iteration instead of restarting it."""

    def __init__(self, col_weights: torch.Tensor | None, svd: str = "randomized", power_iters: int = 3):
        self.col_weights, self.svd, self.power_iters = col_weights, svd, power_iters
        self.basis: torch.Tensor | None = None  # (k, h) right basis of the weighted grid

    def __call__(self, R: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        sw = _root_weights(self.col_weights, R.device)
        Rw = R if sw is None else R * sw
        U, s, Vh = weighted_svd(Rw, rank, self.svd, self.power_iters, self.basis)
        self.basis = Vh if Vh.shape[0] < min(Rw.shape) else None  # only a partial basis is worth carrying
        return split_factors(U, s, Vh, rank, sw)


def weighted_svd(Rw: torch.Tensor, rank: int, svd: str, power_iters: int, start: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The leading triplets of Rw: all of them (exact) or rank + oversampling (randomized)."""
    if svd not in SVD_KINDS:
        raise ValueError(f"svd must be one of {SVD_KINDS}, got {svd!r}")
    if svd == "randomized" and use_randomized(rank, *Rw.shape):
        return randomized_svd(Rw, rank, power_iters, start)
    return torch.linalg.svd(Rw, full_matrices=False)


def split_factors(U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, rank: int, sw: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A = (U sqrt(s))^T, B = sqrt(s) Vh / sqrt(w), truncated to `rank`."""
    root = s[:rank].sqrt().to(U.dtype)
    A = (U[:, :rank] * root).T
    B = root[:, None] * Vh[:rank]
    if sw is not None:
        B = B / sw
    return A.contiguous(), B.contiguous()


def _root_weights(col_weights: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if col_weights is None else col_weights.sqrt().to(device)


def use_randomized(rank: int, m: int, h: int) -> bool:
    """Whether the randomized SVD pays: its probes must stay well below the full dimension."""
    return 0 < rank and rank + oversampling(rank) < min(m, h) / 2


def randomized_svd(M: torch.Tensor, rank: int, power_iters: int = 3, start: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (m, k), s (k,), Vh (k, h) of the best rank-k approximation of M within the probed subspace,
    k = rank + oversampling(rank) (so the first `rank` triplets approximate those of the exact SVD).

    `start` (j, h): rows whose span seeds the probes (previous right singular vectors); random
    probes fill up to k. Every product is re-orthonormalized by QR, which keeps the small singular
    directions from drowning in rounding after a few power iterations.
    """
    m, h = M.shape
    k = min(rank + oversampling(rank), m, h)
    probes = _probes(M, k, start)
    Q = _orth(M @ probes)
    for _ in range(power_iters):
        Z = _orth(M.mH @ Q)
        Q = _orth(M @ Z)
    # M ~ Q (Q^H M): the SVD of the small (k, h) matrix gives that of the approximation.
    Ub, s, Vh = torch.linalg.svd(Q.mH @ M, full_matrices=False)
    return Q @ Ub, s, Vh


def _probes(M: torch.Tensor, k: int, start: torch.Tensor | None) -> torch.Tensor:
    """(h, k) probe matrix: the span of `start`'s rows (as columns of V = Vh^H) then Gaussian columns."""
    h = M.shape[1]
    warm = None if start is None else start[:k].to(M.dtype).mH
    fresh = k - (0 if warm is None else warm.shape[1])
    g = torch.Generator(device=M.device).manual_seed(PROBE_SEED)
    rand = torch.randn(h, fresh, dtype=M.dtype, device=M.device, generator=g)
    return rand if warm is None else torch.cat([warm, rand], dim=1)


def _orth(Y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(Y, mode="reduced").Q
