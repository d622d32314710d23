"""Shared machinery of the binarization family (BiLLM, ARB-LLM, PB-LLM, SAB-LVLM).

- `blocked_binarize`: GPTQ-style column blocks (last one may be partial) with error feedback; each
  block is binarized as a whole by a method's `fit_block`, then the block's error is propagated
  to later columns through the upper Cholesky factor of H^-1 (as BiLLM's code does).
- selection: salient columns (Hessian salience W^2 / diag(U)^2, structural search of their
  count) and the magnitude split of the non-salient weights into two groups (searched threshold).
- fitters for masked groups: plain mean/scale, ARB (alternating, optionally elementwise weighted),
  ARB-X (X^T X-aware), ARB-RC (row x column scales, optionally weighted: SAB's Lambda^2).
All weighted closed forms are exact minimizers of their weighted squared error in one variable.
"""

from __future__ import annotations

from typing import Callable

import torch

from llava_fa.errors import DataError
from llava_fa.formats.binary import BinaryParts, reconstruct, round_parts

EPS = 1e-12


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _wsum(x: torch.Tensor, m: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Row sums of x over mask m with optional elementwise weights w."""
    mm = m.float() if w is None else m.float() * w
    return (x * mm).sum(1)


# --- group fitters (per row, over a mask) --------------------------------------------------------
def fit_mean_scale(W, m, w=None):
    """BiLLM's order-1 binarization of the masked weights of each row: mu = mean, alpha = mean|W - mu|."""
    cnt = _wsum(torch.ones_like(W), m, w).clamp_min(EPS)
    mu = _wsum(W, m, w) / cnt
    B = _sign(W - mu[:, None])
    alpha = _wsum(B * (W - mu[:, None]), m, w) / cnt
    return mu, alpha, B


def fit_arb(W, m, w=None, iters: int = 15):
    """ARB-LLM's alternating refined binarization (mean, scale, signs in turn), weighted by w."""
    mu, alpha, B = fit_mean_scale(W, m, w)
    cnt = _wsum(torch.ones_like(W), m, w).clamp_min(EPS)
    for _ in range(iters):
        mu = _wsum(W - alpha[:, None] * B, m, w) / cnt
        B = _sign(W - mu[:, None])
        alpha = _wsum(B * (W - mu[:, None]), m, w) / cnt
    return mu, alpha, B


def simple_err(W, m, w=None):
    """Squared error of the order-1 mean/scale binarization of the masked weights (per row, summed)."""
    mu, alpha, B = fit_mean_scale(W, m)
    e = (W - mu[:, None] - alpha[:, None] * B) ** 2
    return _wsum(e, m, w).sum()


def order2_err(W, m, w=None):
    mu, alpha, B = fit_mean_scale(W, m)
    R = W - mu[:, None] - alpha[:, None] * B
    return simple_err(R, m, w)


# --- selection -----------------------------------------------------------------------------------
SALIENT_COUNTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)


def select_salient_columns(W, d, w=None, counts=SALIENT_COUNTS, max_frac: float = 0.08):
    """Salient columns by Hessian salience sum_i W^2 / d^2 (d = diag of the Cholesky factor of
    H^-1), their number found by BiLLM's structural search (order 2 on them, order 1 on the rest)."""
    n = W.shape[1]
    sal = (W ** 2 / d[None, :] ** 2)
    if w is not None:
        sal = sal * w
    order = torch.argsort(sal.sum(0), descending=True)
    best, best_k = None, 0
    for k in counts:
        if k > max_frac * n:
            break
        mask = torch.zeros(n, dtype=torch.bool, device=W.device)
        mask[order[:k]] = True
        M = mask[None, :].expand_as(W)
        err = simple_err(W, ~M, w) + (order2_err(W, M, w) if k else 0.0)
        if best is None or err < best:
            best, best_k = err, k
    mask = torch.zeros(n, dtype=torch.bool, device=W.device)
    mask[order[:best_k]] = True
    return mask


def split_groups(W, nonsal, w=None, n_cand: int = 40):
    """BiLLM's split of the non-salient weights at a searched magnitude threshold: bitmap True
    where |W| > p (the sparse, large-magnitude group). Returns a bool (out, n) bitmap."""
    A = W.abs()
    vals = A[nonsal]
    if vals.numel() < 2:
        return torch.zeros_like(nonsal)
    qs = torch.linspace(0.5, 0.995, n_cand, device=W.device)
    sample = vals if vals.numel() <= 1 << 20 else vals[torch.randperm(vals.numel(), device=W.device)[: 1 << 20]]
    cands = torch.quantile(sample.float(), qs)
    best, best_p = None, None
    for p in cands:
        hi = nonsal & (A > p)
        err = simple_err(W, hi, w) + simple_err(W, nonsal & ~hi, w)
        if best is None or err < best:
            best, best_p = err, p
    return nonsal & (A > best_p)


# --- ARB-X and ARB-RC refinements ----------------------------------------------------------------
def refine_x(W, Q, groups, mus, alphas, Bs, S, iters: int = 15):
    """ARB-X: per row and group, the (mean, scale) minimizing (W - Q) S (W - Q)^T with S = X^T X of
    the block (the other groups held fixed), then the signs B = sign(W - mu); `iters` rounds.
    `Q` is the current reconstruction (updated in place through returned copy)."""
    Q = Q.clone()
    for _ in range(iters):
        for g, m in enumerate(groups):
            mf = m.float()
            own = mf * (mus[g][:, None] + alphas[g][:, None] * Bs[g])
            T = W - Q + own
            Bm = Bs[g] * mf
            MS, BS = mf @ S, Bm @ S
            a11, a12, a22 = (MS * mf).sum(1), (MS * Bm).sum(1), (BS * Bm).sum(1)
            r1, r2 = (MS * T).sum(1), (BS * T).sum(1)
            det = a11 * a22 - a12 * a12
            ok = det.abs() > 1e-9 * (a11 * a22).abs().clamp_min(EPS)
            mu = torch.where(ok, (a22 * r1 - a12 * r2) / torch.where(ok, det, 1.0), mus[g])
            al = torch.where(ok, (a11 * r2 - a12 * r1) / torch.where(ok, det, 1.0), alphas[g])
            mus[g], alphas[g] = mu, al
            Bs[g] = _sign(W - mu[:, None]) * torch.where(al < 0, -1.0, 1.0)[:, None]
            Q = Q - own + mf * (mu[:, None] + al[:, None] * Bs[g])
    return mus, alphas, Bs


def rc_update_rows(W, B, groups, col, w=None):
    """alpha_r[i,g] = sum_j w_ij col_j B_ij W_ij / sum_j w_ij col_j^2 over the group's weights."""
    out = []
    for m in groups:
        num = _wsum(col[None, :] * B * W, m, w)
        den = _wsum(col[None, :].expand_as(W) ** 2, m, w)
        out.append(torch.where(den > EPS, num / den.clamp_min(EPS), torch.zeros_like(num)))
    return out


def rc_update_cols(W, B, gid, alpha_r, cols_mask, w=None):
    """alpha_c[j] = sum_i w_ij a_ij B_ij W_ij / sum_i w_ij a_ij^2, a_ij = alpha_r of (i, group of j);
    only columns in `cols_mask` change (the others keep 1)."""
    A = torch.stack(alpha_r, 1).gather(1, gid)  # (out, n)
    ww = torch.ones_like(W) if w is None else w
    num = (ww * A * B * W).sum(0)
    den = (ww * A * A).sum(0)
    col = torch.where(den > EPS, num / den.clamp_min(EPS), torch.ones_like(num))
    return torch.where(cols_mask, col, torch.ones_like(col))


# --- the blocked driver --------------------------------------------------------------------------
def prepare_hessian(W: torch.Tensor, H: torch.Tensor | None, damp: float):
    """Dead inputs zeroed, damping added; returns (W, damped H, upper Cholesky factor of H^-1)."""
    W = W.detach().float().clone()
    n = W.shape[1]
    if H is None:
        H = torch.eye(n, device=W.device)
    H = H.detach().float().clone().to(W.device)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += torch.eye(n, device=W.device) * (damp * torch.diagonal(H).mean())
    try:
        L = torch.linalg.cholesky(H)
        U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise DataError(f"binarization: the damped Hessian is not positive definite (damp={damp}). "
                        f"Fix: raise damp or use more calibration samples") from None
    return W, H, U


BlockFitter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, slice], BinaryParts]


def blocked_binarize(weight: torch.Tensor, H: torch.Tensor | None, fit_block: BlockFitter, *,
                     block_size: int = 128, damp: float = 0.01) -> tuple[list[BinaryParts], torch.Tensor]:
    """Binarize block by block with GPTQ error feedback. `fit_block(W1, U1, H1, cols)` returns the
    block's parts (row_scales etc. of shape (out, 1, G)). Returns the fp16-rounded block parts and
    the dense reconstruction."""
    W, Hd, U = prepare_hessian(weight, H, damp)
    n = W.shape[1]
    parts, Q = [], torch.zeros_like(W)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1, U1 = W[:, i1:i2], U[i1:i2, i1:i2]
        p = round_parts(fit_block(W1.clone(), U1, Hd[i1:i2, i1:i2], slice(i1, i2)))
        Q1 = reconstruct(p, block_size)
        # Sequential GPTQ feedback inside the block with Q1 fixed, in closed form: W1 - Q1 = E U1.
        E = torch.linalg.solve_triangular(U1, W1 - Q1, upper=True, left=False)
        if i2 < n:
            W[:, i2:] -= E @ U[i1:i2, i2:]
        parts.append(p)
        Q[:, i1:i2] = Q1
    return parts, Q


def concat_parts(parts: list[BinaryParts]) -> BinaryParts:
    """Join block parts (each with n_blocks = 1) along columns / blocks."""
    def cat(name, dim):
        ts = [getattr(p, name) for p in parts]
        return None if ts[0] is None else torch.cat(ts, dim)
    out = BinaryParts(cat("signs", 1), cat("row_scales", 1), cat("means", 1), cat("col_scales", 0),
                      cat("salient", 0), cat("res_signs_full", 1), cat("res_scales", 1), cat("res_means", 1),
                      cat("bitmap", 1), cat("outlier_mask", 1), None, cat("outlier_scales", 1))
    if parts[0].outlier_codes is not None:
        # codes are in row-major order of each block's mask; re-order to row-major of the full mask
        rows = []
        for p in parts:
            counts = p.outlier_mask.sum(1).tolist()
            rows.append(list(torch.split(p.outlier_codes, counts)))
        out.outlier_codes = torch.cat([torch.cat([r[i] for r in rows]) for i in range(len(rows[0]))])
    return out


# --- one block of the family ---------------------------------------------------------------------
def family_block(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, *, kind: str, iters: int = 15,
                 salient: bool = True, bitmap: bool = True, w: torch.Tensor | None = None,
                 steer: torch.Tensor | None = None, max_salient_frac: float = 0.08) -> BinaryParts:
    """Binarize one block. kind: "billm" (mean/scale), "arb" (ARB), "arb-x" (ARB then X^T X-aware
    refinement with S), "rc" (ARB-RC row x column scales, no means). `w`: elementwise weights of the
    error (SAB's Lambda^2) used by the scale/mean fits; `steer`: weights used by the salient-column
    and group-split searches (None: plain Hessian salience / Frobenius error)."""
    out_f, b = W.shape
    dev = W.device
    sal = select_salient_columns(W, torch.diagonal(U), steer, max_frac=max_salient_frac) if salient else None
    nonsal = torch.ones_like(W, dtype=torch.bool) if sal is None else ~sal[None, :].expand_as(W)
    bm = split_groups(W, nonsal, steer) if bitmap else None
    groups = [nonsal & ~bm, nonsal & bm] if bitmap else [nonsal]
    smask = None if sal is None else sal[None, :].expand_as(W).clone()
    masks = groups + ([smask] if salient else [])
    G = len(masks)
    gid = torch.zeros(out_f, b, dtype=torch.long, device=dev) if bm is None else bm.long()
    if salient:
        gid = torch.where(smask, torch.full_like(gid, G - 1), gid)

    p = BinaryParts(signs=torch.zeros_like(W, dtype=torch.bool), row_scales=torch.zeros(out_f, 1, G, device=dev),
                    bitmap=bm, salient=sal)
    if kind in ("billm", "arb", "arb-x"):
        fitter = fit_mean_scale if kind == "billm" else (lambda X, m, ww: fit_arb(X, m, ww, iters))
        fits = [fitter(W, m, w) for m in masks]
        mus, alphas, Bs = [f[0] for f in fits], [f[1] for f in fits], [f[2] for f in fits]
        first = sum(m.float() * (mu[:, None] + al[:, None] * B) for m, mu, al, B in zip(masks, mus, alphas, Bs))
        res = torch.zeros_like(W)
        if salient:
            mu2, al2, B2 = fitter(W - first, smask, w)
            res = smask.float() * (mu2[:, None] + al2[:, None] * B2)
            p.res_signs_full, p.res_scales, p.res_means = (B2 > 0) & smask, al2[:, None], mu2[:, None]
        if kind == "arb-x":
            mus, alphas, Bs = refine_x(W - res, first, masks, mus, alphas, Bs, S, iters)
        p.means = torch.stack(mus, 1)[:, None, :]
        p.row_scales = torch.stack(alphas, 1)[:, None, :]
        for m, B in zip(masks, Bs):
            p.signs |= m & (B > 0)
    elif kind == "rc":
        B = _sign(W)
        p.signs = W >= 0
        col = torch.ones(b, device=dev)
        alpha = rc_update_rows(W, B, masks, col, w)  # col = 1: the weighted mean |W| per group
        nonsal_cols = torch.ones(b, dtype=torch.bool, device=dev) if sal is None else ~sal
        for _ in range(iters):
            col = rc_update_cols(W, B, gid, alpha, nonsal_cols, w)
            alpha = rc_update_rows(W, B, masks, col, w)
        p.col_scales = col
        p.row_scales = torch.stack(alpha, 1)[:, None, :]
        if salient:
            first = alpha[-1][:, None] * B * smask.float()  # salient columns keep col scale 1
            mu2, al2, B2 = fit_arb(W - first, smask, w, iters)
            p.res_signs_full, p.res_scales, p.res_means = (B2 > 0) & smask, al2[:, None], mu2[:, None]
    else:
        raise ValueError(f"unknown binarization kind {kind!r}")
    if salient and p.res_signs_full is None:
        p.res_signs_full = torch.zeros_like(W, dtype=torch.bool)
    return p


def pb_block(W: torch.Tensor, U: torch.Tensor, frac: float) -> BinaryParts:
    """PB-LLM: the top `frac` weights by Hessian salience W^2 / d^2 kept at 8 bits (symmetric,
    per-row scale), the rest sign-binarized with the scale mean|W| per row."""
    out_f, b = W.shape
    sal = W ** 2 / torch.diagonal(U)[None, :] ** 2
    k = int(round(frac * W.numel()))
    om = torch.zeros(W.numel(), dtype=torch.bool, device=W.device)
    if k:
        om[torch.topk(sal.reshape(-1), k).indices] = True
    om = om.reshape(W.shape)
    amax = (W.abs() * om).amax(1)
    oscale = (amax / 127).clamp_min(1e-8).to(torch.float16).float()
    codes = (torch.round(W / oscale[:, None]).clamp(-127, 127) + 128)[om].long()
    rest = ~om
    alpha = _wsum(W.abs(), rest, None) / rest.float().sum(1).clamp_min(1)
    return BinaryParts(signs=W >= 0, row_scales=alpha[:, None, None], outlier_mask=om, outlier_codes=codes,
                       outlier_scales=oscale[:, None])
