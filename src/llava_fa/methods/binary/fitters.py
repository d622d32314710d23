"""Binarizations of masked groups of weights, per row: the closed forms of the family.

- `fit_mean_scale`: BiLLM's order-1 mean and scale; `fit_arb`: ARB-LLM's alternating refinement;
- `refine_x`: ARB-X, the (mean, scale) per group that minimize the block's output error under X^T X;
- `rc_update_rows` / `rc_update_cols`: ARB-RC's row x column scales, alternating.
`w` is an optional elementwise weight of the squared error (SAB's Lambda^2); every weighted closed
form is the exact minimizer of its weighted squared error in its one variable.
The order-1 fits and their errors take masks with leading batch dimensions (candidate masks of a
search, evaluated at once: selection.py), W and w broadcasting against them.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (a zero weight must still get a sign), in x's dtype."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def masked_row_sum(x: torch.Tensor, m: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Row sums of x over mask m with optional elementwise weights w."""
    mm = m.float() if w is None else m.float() * w
    return (x * mm).sum(-1)


def fit_mean_scale(W, m, w=None):
    """BiLLM's order-1 binarization of the masked weights of each row: mu = mean, alpha = mean|W - mu|."""
    cnt = masked_row_sum(torch.ones_like(W), m, w).clamp_min(EPS)
    mu = masked_row_sum(W, m, w) / cnt
    B = binary_sign(W - mu[..., None])
    alpha = masked_row_sum(B * (W - mu[..., None]), m, w) / cnt
    return mu, alpha, B


def fit_arb(W, m, w=None, iters: int = 15):
    """ARB-LLM's alternating refined binarization (mean, scale, signs in turn), weighted by w."""
    mu, alpha, B = fit_mean_scale(W, m, w)
    cnt = masked_row_sum(torch.ones_like(W), m, w).clamp_min(EPS)
    for _ in range(iters):
        mu = masked_row_sum(W - alpha[..., None] * B, m, w) / cnt
        B = binary_sign(W - mu[..., None])
        alpha = masked_row_sum(B * (W - mu[..., None]), m, w) / cnt
    return mu, alpha, B


def simple_err(W, m, w=None):
    """Squared error of the order-1 mean/scale binarization of the masked weights (per row, summed;
    one error per mask of a batch)."""
    mu, alpha, B = fit_mean_scale(W, m)
    e = (W - mu[..., None] - alpha[..., None] * B) ** 2
    return masked_row_sum(e, m, w).sum(-1)


def order2_err(W, m, w=None):
    """Squared error of binarizing the masked weights twice (order 1, then its residual)."""
    mu, alpha, B = fit_mean_scale(W, m)
    R = W - mu[..., None] - alpha[..., None] * B
    return simple_err(R, m, w)


def refine_x(W, Q, groups, mus, alphas, Bs, S, iters: int = 15):
    """ARB-X: per row and group, the (mean, scale) minimizing (W - Q) S (W - Q)^T with S = X^T X of
    the block (the other groups held fixed), then the signs B = sign(W - mu); `iters` rounds.
    `Q` is the current reconstruction (a copy is updated as the groups change)."""
    Q = Q.clone()
    # What the masks alone fix stays fixed across rounds: computed once (a launch each per round on a GPU).
    mfs = [m.float() for m in groups]
    MSs = [mf @ S for mf in mfs]
    a11s = [(MS * mf).sum(1) for MS, mf in zip(MSs, mfs)]
    for _ in range(iters):
        for g, (mf, MS, a11) in enumerate(zip(mfs, MSs, a11s)):
            own = mf * (mus[g][:, None] + alphas[g][:, None] * Bs[g])
            T = W - Q + own
            Bm = Bs[g] * mf
            BS = Bm @ S
            a12, a22 = (MS * Bm).sum(1), (BS * Bm).sum(1)
            r1, r2 = (MS * T).sum(1), (BS * T).sum(1)
            det = a11 * a22 - a12 * a12
            ok = det.abs() > 1e-9 * (a11 * a22).abs().clamp_min(EPS)  # a singular 2x2 keeps the old fit
            mu = torch.where(ok, (a22 * r1 - a12 * r2) / torch.where(ok, det, 1.0), mus[g])
            al = torch.where(ok, (a11 * r2 - a12 * r1) / torch.where(ok, det, 1.0), alphas[g])
            mus[g], alphas[g] = mu, al
            Bs[g] = binary_sign(W - mu[:, None]) * torch.where(al < 0, -1.0, 1.0)[:, None]
            Q = Q - own + mf * (mu[:, None] + al[:, None] * Bs[g])
    return mus, alphas, Bs


def rc_update_rows(W, B, groups, col, w=None):
    """alpha_r[i,g] = sum_j w_ij col_j B_ij W_ij / sum_j w_ij col_j^2 over the group's weights;
    `groups` (G, out, b) stacked masks, returns (out, G)."""
    num = masked_row_sum(col[None, :] * B * W, groups, w)
    den = masked_row_sum(col[None, :].expand_as(W) ** 2, groups, w)
    return torch.where(den > EPS, num / den.clamp_min(EPS), torch.zeros_like(num)).T


def rc_update_cols(W, B, gid, alpha_r, cols_mask, w=None):
    """alpha_c[j] = sum_i w_ij a_ij B_ij W_ij / sum_i w_ij a_ij^2, a_ij = alpha_r of (i, group of j);
    only columns in `cols_mask` change (the others keep 1)."""
    A = alpha_r.gather(1, gid)  # (out, n)
    ww = torch.ones_like(W) if w is None else w
    num = (ww * A * B * W).sum(0)
    den = (ww * A * A).sum(0)
    col = torch.where(den > EPS, num / den.clamp_min(EPS), torch.ones_like(num))
    return torch.where(cols_mask, col, torch.ones_like(col))
