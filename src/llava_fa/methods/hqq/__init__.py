"""`hqq`: Half-Quadratic Quantization (Badri & Shaji, 2023), calibration-free.

Per group, with codes q = clamp(round(w / s + z)), HQQ minimizes the sparsity-promoting loss
||w - s (q - z)||_p^p (p < 1) by half-quadratic splitting: an auxiliary error e absorbs the outliers
(generalized soft-thresholding `shrink_lp`), then z (and optionally s) get a closed-form update on
w - e; beta grows by kappa each iteration (published: p = 0.7, beta = 10, kappa = 1.01, 20 iterations,
stop when the mean |error| stops decreasing).

Storage: the `affine` format, whose zero points are integers in [0, 2^b - 1] and whose scales are
float16. HQQ's own zero is a float; here the zero is optimized as a float during the iterations and
then projected to the nearest integer, after which the scale is refitted in closed form (least
squares on the shrunk target) and the codes are rounded again. Per group, the result is kept only
where it lowers the mean |error| (HQQ's criterion) below RTN's min/max fit, so HQQ never does worse
than RTN on that criterion. (With `opt_scale` the scale also takes a least-squares update each
iteration; HQQ's default optimizes the zero only.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats import AffineLinear
from llava_fa.calibration.stats import LayerStats
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.common import GROUP_SIZE_HELP, check_affine_options
from llava_fa.quantizers import fit, pad_to_groups, resolve_group_size
from llava_fa.quantizers.float16 import F16 as _F16, f16_up



@dataclass
class HQQConfig(MethodConfig):
    bits: int = option(4, "bits per code, 1 to 8")
    group_size: int = option(64, GROUP_SIZE_HELP)  # as rtn/gptq, and HQQ's own default
    lp_norm: float = option(0.7, "p of the sparsity-promoting loss ||w - s (q - z)||_p^p, in (0, 1] (published 0.7)")
    beta: float = option(10.0, "initial weight of the half-quadratic coupling (published 10)")
    kappa: float = option(1.01, "beta is multiplied by kappa each iteration, >= 1 (published 1.01)")
    iters: int = option(20, "half-quadratic iterations; the per-group best is kept (published 20)")
    opt_scale: bool = option(False, "also refit the scale by least squares each iteration (HQQ's default: zero only)")

    def check(self) -> None:
        check_affine_options("hqq", self.bits, self.group_size, False)
        if not 0 < self.lp_norm <= 1:
            raise ConfigError(f"hqq: lp_norm must be in (0, 1], got {self.lp_norm}")
        if self.beta <= 0 or self.kappa < 1 or self.iters < 0:
            raise ConfigError("hqq: beta must be > 0, kappa >= 1 and iters >= 0")


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding, the proximal step of |x|^p / beta (HQQ eq. 5)."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * x.abs().clamp_min(1e-12).pow(p - 1))


def _codes(w, s, z, maxq):
    return torch.clamp(torch.round(w / s + z), 0, maxq)


def hqq_quantize(weight: torch.Tensor, bits: int, group_size: int, lp_norm: float = 0.7, beta: float = 10.0,
                 kappa: float = 1.01, iters: int = 20, opt_scale: bool = False):
    """Codes (out, in) int64, scale (float16 values) and integer zero (out, G), as quantize_grouped."""
    out_f, n = weight.shape
    g = resolve_group_size(group_size, n)
    maxq = (1 << bits) - 1
    # A shorter last group is padded with zeros, which then take part in its fit (lightly: one group per row).
    W = pad_to_groups(weight.detach().float(), g).reshape(out_f, -1, g)
    s0, z0 = fit(W, bits, False)
    s, z = s0[..., None].clone(), z0[..., None].clone()  # z float during the iterations
    best_err = torch.full_like(s, float("inf"))
    best_s, best_z = s.clone(), z.clone()
    for _ in range(iters):
        q = _codes(W, s, z, maxq)
        Wr = s * (q - z)
        err = (W - Wr).abs().mean(-1, keepdim=True)
        better = err < best_err  # per-group early stop of the published loop, as a running best
        best_err = torch.where(better, err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        We = shrink_lp(W - Wr, beta, lp_norm)
        T = W - We  # the target the quantized grid should hit
        if opt_scale:
            qc = q - q.mean(-1, keepdim=True)
            Tc = T - T.mean(-1, keepdim=True)
            num, den = (qc * Tc).sum(-1, keepdim=True), (qc * qc).sum(-1, keepdim=True)
            s = torch.where((den > 0) & (num > 0), num / den.clamp_min(1e-12), s).clamp(_F16.tiny, _F16.max)
        z = (q - T / s).mean(-1, keepdim=True)
        beta *= kappa
    s, z = best_s, best_z
    # Project to the stored format: integer zero in [0, maxq], float16 scale, then refit the scale
    # by least squares on the current codes, and round the codes once more.
    zi = z.round().clamp(0, maxq)
    q = _codes(W, s, zi, maxq)
    d = q - zi
    den = (d * d).sum(-1, keepdim=True)
    s_ls = torch.where(den > 0, (d * W).sum(-1, keepdim=True) / den.clamp_min(1e-12), s)
    s_ls = torch.where(s_ls > 0, s_ls, s)
    cands = [(s0[..., None], z0[..., None]), (s, zi), (s_ls, zi)]
    best = None
    for cs, cz in cands:
        cs = f16_up(cs)
        cq = _codes(W, cs, cz, maxq)
        e = (W - cs * (cq - cz)).abs().mean(-1, keepdim=True)
        if best is None:
            best = [e, cs, cz, cq]
        else:
            t = e < best[0]
            best = [torch.where(t, e, best[0]), torch.where(t, cs, best[1]), torch.where(t, cz, best[2]),
                    torch.where(t, cq, best[3])]
    _, s, z, q = best
    return q.reshape(out_f, -1)[:, :n].to(torch.int64), s[..., 0], z[..., 0]


@register_method
class HQQ(Method):
    name = "hqq"
    Config = HQQConfig
    needs = frozenset()

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> AffineLinear:
        c = self.config
        codes, scale, zero = hqq_quantize(weight, c.bits, c.group_size, c.lp_norm, c.beta, c.kappa, c.iters,
                                          c.opt_scale)
        return AffineLinear.from_codes(codes, scale, zero, bits=c.bits, sym=False, bias=bias, group_size=c.group_size)
