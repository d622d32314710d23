"""`sab`: SAB-LVLM, significance-aware binarization (arXiv 2607.01876) on ARB-RC.

Per-modality Hessians H_text, H_image (one calibration pass, token positions split by modality).
Per-weight significance S_M[i,j] = W_ij^2 * H_M[j,j]. Masks (a partition of the weights): text-only
salient, vision-only salient, cross-modal (salient, not modality-specific), neither. Ratio
r = sum(S over text-only and vision-only) / sum(S), S = S_text + S_image. Hoyer sparsity rho over the
per-modality significance vector v_ij = (S_text, S_image) and Lambda = r*rho + (1-r)*(1-rho).
Lambda weights the ARB-RC alternating update (w = Lambda^2 in the closed forms) and, with
`lambda_steers_selection`, the salient-column and group searches too. Lambda is not stored: the
result is an ordinary `binary` layer of ARB-RC's layout.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch

from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats.binary import BinaryLinear
from llava_fa.methods.base import option, register_method
from llava_fa.methods.binary import ARBConfig, BinaryMethod, blocked_binarize, concat_parts, family_block


@dataclass
class SABConfig(ARBConfig):
    method: ClassVar[str] = "sab"

    use_lambda: bool = option(True, "weight the ARB-RC fits by Lambda^2 (off: plain ARB-RC)")
    lambda_steers_selection: bool = option(False, "Lambda^2 also weights the salient-column and group searches "
                                                  "(ours: off, Lambda weights the scale fits only; measure both)")
    salient_top_p: float = option(0.05, "a weight is salient for a modality in its top fraction of significance "
                                        "(authors' default 5%)")
    diff_quantile: float = option(0.5, "a salient weight is modality-specific beyond this quantile of the "
                                       "normalized |difference| (authors' default)")
    sparsity_thr: float = option(0.005, "a modality's share of a weight's significance below this counts as "
                                        "zero in the Hoyer sparsity (authors' default)")
    # Lambda runs between r and 1 - r, so with r near 0 or 1 the weighted fits can all but ignore
    # some weights. On the testbed a floor of 0.5 did not mend SAB's worst layer (docs/RESULTS.md).
    lambda_floor: float = option(0.0, "Lambda clamped below at this value before the fits (ours; 0: the "
                                      "authors' form)")

    def check(self) -> None:
        super().check()
        for k in ("salient_top_p", "diff_quantile"):
            if not 0 < getattr(self, k) < 1:
                raise ConfigError(f"sab: {k} must be in (0, 1), got {getattr(self, k)}")
        if not 0 <= self.lambda_floor <= 1:
            raise ConfigError(f"sab: lambda_floor must be in [0, 1], got {self.lambda_floor}")
        if not 0 <= self.sparsity_thr < 0.5:
            raise ConfigError(f"sab: sparsity_thr must be in [0, 0.5), got {self.sparsity_thr}")


def significance(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    return W.float() ** 2 * torch.diagonal(H).float()[None, :]


def modality_masks(S_t: torch.Tensor, S_v: torch.Tensor, top_p: float, diff_quantile: float):
    """(text_only, vision_only, cross, neither): bool masks partitioning the weights.

    Each modality's significance is normalized by its total so the two are comparable. Salient for
    M: in the top `top_p` of S_M. Normalized difference d = (s_t - s_v) / (s_t + s_v); a salient
    weight is modality-specific when |d| is at or beyond the `diff_quantile` of |d| over the salient
    weights, and belongs to the modality with the larger share; other salient weights are cross."""
    st, sv = S_t / S_t.sum().clamp_min(1e-30), S_v / S_v.sum().clamp_min(1e-30)
    k = max(1, int(round(top_p * st.numel())))
    thr_t = torch.topk(st.reshape(-1), k).values[-1]
    thr_v = torch.topk(sv.reshape(-1), k).values[-1]
    sal_t, sal_v = st >= thr_t, sv >= thr_v
    union = sal_t | sal_v
    d = (st - sv) / (st + sv).clamp_min(1e-30)
    tau = torch.quantile(d.abs()[union].float(), diff_quantile) if bool(union.any()) else 0.0
    specific = union & (d.abs() >= tau)
    text_only = specific & sal_t & (d > 0)
    vision_only = specific & sal_v & (d < 0)
    cross = union & ~text_only & ~vision_only
    return text_only, vision_only, cross, ~union


def hoyer(V: torch.Tensor, sparsity_thr: float = 0.0) -> torch.Tensor:
    """Hoyer sparsity over the last axis: (sqrt(z) - |v|_1/|v|_2) / (sqrt(z) - 1); 0 where v = 0.

    The paper's v_ij runs over z calibration samples. We only keep the two per-modality Hessians,
    so v_ij = (S_text, S_image) and z = 2: rho = 1 for a weight that matters under one modality only,
    0 for one that matters equally under both. Entries whose share of sum(v) is below
    `sparsity_thr` count as zero."""
    z = V.shape[-1]
    tot = V.sum(-1, keepdim=True)
    V = torch.where(V < sparsity_thr * tot, torch.zeros_like(V), V)
    l1, l2 = V.abs().sum(-1), V.norm(dim=-1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-30), torch.full_like(l1, math.sqrt(z)))
    return ((math.sqrt(z) - ratio) / (math.sqrt(z) - 1)).clamp(0, 1)


def significance_map(W: torch.Tensor, H_t: torch.Tensor, H_v: torch.Tensor, cfg: SABConfig):
    """Lambda (out, in) and the diagnostics (masks, r, rho)."""
    S_t, S_v = significance(W, H_t), significance(W, H_v)
    masks = modality_masks(S_t, S_v, cfg.salient_top_p, cfg.diff_quantile)
    S = S_t + S_v
    r = float((S * (masks[0] | masks[1])).sum() / S.sum().clamp_min(1e-30))
    # Normalized per modality (as in the masks), so rho compares shares, not raw Hessian scales.
    V = torch.stack([S_t / S_t.sum().clamp_min(1e-30), S_v / S_v.sum().clamp_min(1e-30)], -1)
    rho = hoyer(V, cfg.sparsity_thr)
    lam = r * rho + (1 - r) * (1 - rho)
    return lam, {"masks": masks, "r": r, "rho": rho}


def sab_binarize(weight: torch.Tensor, H: torch.Tensor | None, lam: torch.Tensor | None, cfg: SABConfig):
    """ARB-RC with the Lambda^2-weighted closed forms (lam None: plain ARB-RC). Returns parts list, Q."""
    w = None if lam is None else lam.float().clamp_min(cfg.lambda_floor) ** 2

    def fit(W1, U1, H1, cols):
        wb = None if w is None else w[:, cols]
        return family_block(W1, U1, H1, kind="rc", iters=cfg.iters, salient=cfg.salient, bitmap=cfg.bitmap,
                            w=wb, steer=wb if cfg.lambda_steers_selection else None,
                            max_salient_frac=cfg.max_salient_frac)

    return blocked_binarize(weight, H, fit, block_size=cfg.block_size, damp=cfg.damp, method="sab")


@register_method
class SAB(BinaryMethod):
    name = "sab"
    Config = SABConfig
    needs = frozenset({XTX})
    kind = "rc"
    requires_stats = True

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> BinaryLinear:
        c = self.config
        if stats is None:
            raise ConfigError("sab needs calibration data (X^T X per modality); do not pass --nsamples 0")
        H = stats.hessian(c.modality).to(weight.device)
        lam = None
        if c.use_lambda:
            if stats.count("text") and stats.count("image"):
                lam, _ = significance_map(weight.detach().float(), stats.hessian("text").to(weight.device),
                                          stats.hessian("image").to(weight.device), c)
            else:
                warnings.warn("sab: this layer saw tokens of one modality only; Lambda = 1 (plain ARB-RC)")
        parts, _ = sab_binarize(weight, H, lam, c)
        return BinaryLinear.from_parts(concat_parts(parts), block_size=c.block_size, bias=bias)
