"""One block of columns binarized by a variant of the family (the driver calls these per block).

`family_block` serves billm, arb, arb-x and arb-rc (and SAB, arb-rc with weights): group the
block's weights (salient columns, bitmap), then fit each group with the variant's closed forms.
`pb_block` serves pb-llm: the most salient weights kept at 8 bits, the rest sign-binarized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.formats.binary import BinaryParts
from llava_fa.methods.binary.fitters import (binary_sign, fit_arb, fit_mean_scale, masked_row_sum, rc_update_cols,
                                             rc_update_rows, refine_x)
from llava_fa.methods.binary.selection import select_salient_columns, split_groups

KINDS = ("billm", "arb", "arb-x", "rc")  # the group fits family_block knows


@dataclass
class BlockGroups:
    """The group of every weight of a block: non-salient groups (one, or two split by the bitmap),
    then the salient columns as the last group."""

    salient: torch.Tensor | None  # (b,) bool: salient columns (None: no salient group)
    bitmap: torch.Tensor | None  # (out, b) bool: the large-magnitude non-salient group
    masks: list[torch.Tensor]  # (out, b) bool per group, in slot order
    salient_mask: torch.Tensor | None  # (out, b) bool: the salient columns' weights
    gid: torch.Tensor  # (out, b) group slot of each weight


def block_groups(W, U, *, salient: bool, bitmap: bool, steer=None, max_salient_frac: float = 0.08) -> BlockGroups:
    """Salient columns by Hessian salience (diag of U), then the magnitude split of the others."""
    out_f, b = W.shape
    sal = select_salient_columns(W, torch.diagonal(U), steer, max_frac=max_salient_frac) if salient else None
    nonsal = torch.ones_like(W, dtype=torch.bool) if sal is None else ~sal[None, :].expand_as(W)
    bm = split_groups(W, nonsal, steer) if bitmap else None
    groups = [nonsal & ~bm, nonsal & bm] if bitmap else [nonsal]
    smask = None if sal is None else sal[None, :].expand_as(W).clone()
    masks = groups + ([smask] if salient else [])
    gid = torch.zeros(out_f, b, dtype=torch.long, device=W.device) if bm is None else bm.long()
    if salient:
        gid = torch.where(smask, torch.full_like(gid, len(masks) - 1), gid)
    return BlockGroups(sal, bm, masks, smask, gid)


def family_block(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, *, kind: str, iters: int = 15,
                 salient: bool = True, bitmap: bool = True, w: torch.Tensor | None = None,
                 steer: torch.Tensor | None = None, max_salient_frac: float = 0.08) -> BinaryParts:
    """Binarize one block. kind: "billm" (mean/scale), "arb" (ARB), "arb-x" (ARB then X^T X-aware
    refinement with S), "rc" (ARB-RC row x column scales, no means). `w`: elementwise weights of the
    error (SAB's Lambda^2) used by the scale/mean fits; `steer`: weights used by the salient-column
    and group-split searches (None: plain Hessian salience / Frobenius error)."""
    if kind not in KINDS:
        raise ValueError(f"unknown binarization kind {kind!r}")
    groups = block_groups(W, U, salient=salient, bitmap=bitmap, steer=steer, max_salient_frac=max_salient_frac)
    p = BinaryParts(signs=torch.zeros_like(W, dtype=torch.bool),
                    row_scales=torch.zeros(W.shape[0], 1, len(groups.masks), device=W.device),
                    bitmap=groups.bitmap, salient=groups.salient)
    if kind == "rc":
        fit_row_column(p, W, groups, iters, w)
    else:
        fit_mean_scale_groups(p, W, S, groups, kind, iters, w)
    if salient and p.res_signs_full is None:
        p.res_signs_full = torch.zeros_like(W, dtype=torch.bool)
    return p


def fit_mean_scale_groups(p: BinaryParts, W, S, groups: BlockGroups, kind: str, iters: int, w) -> None:
    """billm / arb / arb-x: a mean and a scale per row and group, the salient columns binarized a
    second time on their residual (order 2); arb-x then refits with S = X^T X. Fills `p`."""
    masks, smask = groups.masks, groups.salient_mask
    fitter = fit_mean_scale if kind == "billm" else (lambda X, m, ww: fit_arb(X, m, ww, iters))
    stacked = torch.stack(masks)  # every group fitted at once: the fits batch over a leading axis
    mu, alpha, B = fitter(W, stacked, w)
    first = (stacked.float() * (mu[..., None] + alpha[..., None] * B)).sum(0)
    mus, alphas, Bs = list(mu.unbind()), list(alpha.unbind()), list(B.unbind())
    res = torch.zeros_like(W)
    if smask is not None:
        mu2, al2, B2 = fitter(W - first, smask, w)
        res = smask.float() * (mu2[:, None] + al2[:, None] * B2)
        p.res_signs_full, p.res_scales, p.res_means = (B2 > 0) & smask, al2[:, None], mu2[:, None]
    if kind == "arb-x":
        mus, alphas, Bs = refine_x(W - res, first, masks, mus, alphas, Bs, S, iters)
    p.means = torch.stack(mus, 1)[:, None, :]
    p.row_scales = torch.stack(alphas, 1)[:, None, :]
    for m, B in zip(masks, Bs):
        p.signs |= m & (B > 0)


def fit_row_column(p: BinaryParts, W, groups: BlockGroups, iters: int, w) -> None:
    """arb-rc: signs of W, row scales per group times column scales (no means), alternating closed
    forms; the salient columns keep column scale 1 and add an order-2 ARB residual. Fills `p`."""
    masks, smask, sal = groups.masks, groups.salient_mask, groups.salient
    B = binary_sign(W)
    p.signs = W >= 0
    col = torch.ones(W.shape[1], device=W.device)
    stacked = torch.stack(masks)
    alpha = rc_update_rows(W, B, stacked, col, w)  # col = 1: the weighted mean |W| per group
    nonsal_cols = torch.ones(W.shape[1], dtype=torch.bool, device=W.device) if sal is None else ~sal
    for _ in range(iters):
        col = rc_update_cols(W, B, groups.gid, alpha, nonsal_cols, w)
        alpha = rc_update_rows(W, B, stacked, col, w)
    p.col_scales = col
    p.row_scales = alpha[:, None, :]
    if smask is not None:
        first = alpha[:, -1:] * B * smask.float()  # salient columns keep col scale 1
        mu2, al2, B2 = fit_arb(W - first, smask, w, iters)
        p.res_signs_full, p.res_scales, p.res_means = (B2 > 0) & smask, al2[:, None], mu2[:, None]


def pb_block(W: torch.Tensor, U: torch.Tensor, frac: float) -> BinaryParts:
    """PB-LLM: the top `frac` weights by Hessian salience W^2 / d^2 kept at 8 bits (symmetric,
    per-row scale), the rest sign-binarized with the scale mean|W| per row."""
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
    alpha = masked_row_sum(W.abs(), rest, None) / rest.float().sum(1).clamp_min(1)
    return BinaryParts(signs=W >= 0, row_scales=alpha[:, None, None], outlier_mask=om, outlier_codes=codes,
                       outlier_scales=oscale[:, None])
