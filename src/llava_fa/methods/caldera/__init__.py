"""`caldera`: W ~= Q + L R with a low-bit Q and low-bit low-rank factors (Saha et al., 2024), fitted by
Hessian-weighted alternating minimization. Stored in the `lowrank` format.

The objective is ||(W - Q - L R) X^T||_F (H = 2/N X^T X), over `iters` outer rounds (default 15, the
paper's outer iterations), keeping the best round:
1. Q = GPTQ/LDLQ of W - L R at `q_bits` (default 2) with groups of `group_size` (GPTQ's
   error feedback is LDLQ; the paper's QuIP# E8 lattice codebook with Hadamard incoherence
   processing is replaced by plain affine per-group codes);
2. L R fitted to E = W - Q: first round, whitened truncated SVD (as svd-llm); then `inner_iters`
   rounds of: R = least squares given the quantized L, quantized by GPTQ with H (R sees the
   layer's inputs); L = H-weighted least squares given the quantized R, quantized by RTN. Both at
   `lr_bits` (default 4, the paper's 4-bit factors), affine codes per group of `lr_group`.
Rounds stop early at the first one that does not lower the weighted error (on random test layers
the second round is often the best: re-quantizing Q draws fresh rounding noise that the factors,
fitted to the previous noise, do not match), and the best round is stored.
Rank: `rank` (default 64, capped at min(m, n)); the paper uses 64-256 for 4096-wide layers, so 64 is
a proportionally large rank for our 576/1536-wide layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.lowrank import LowRankLinear, factor_group
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.common import FACTOR_GROUP_HELP, check_affine_options
from llava_fa.methods.gptq import gptq_quantize
from llava_fa.methods.svd_llm import whitened_factors
from llava_fa.quantizers import AffineSpec, dequantize_grouped, quantize_grouped, resolve_group_size
from llava_fa.quantizers.hessian import prepare_hessian


@dataclass
class CALDERAConfig(MethodConfig):
    rank: int = option(64, "rank of L R, capped at min(m, n); 0: Q alone")
    q_bits: int = option(2, "bits per code of Q (quantized by GPTQ/LDLQ), 1 to 8")
    group_size: int = option(64, "weights per scale and zero of Q, consecutive along a row; -1: one group per row")
    lr_bits: int = option(4, "bits per code of the factors L and R, 2 to 8 (the paper's 4-bit factors)")
    lr_group: int = option(64, FACTOR_GROUP_HELP)
    iters: int = option(15, "outer rounds (Q, then L R), >= 1; stops at the first that does not lower the "
                            "weighted error (the paper's 15)")
    inner_iters: int = option(1, "rounds of R then L by least squares per outer round, >= 1")
    damp: float = option(0.01, "fraction of H's mean diagonal added to H, in [0, 1)")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X forms H")

    def check(self) -> None:
        check_affine_options("caldera", self.q_bits, self.group_size, False)
        if self.rank < 0 or self.iters < 1 or self.inner_iters < 1:
            raise ConfigError("caldera: rank must be >= 0, iters and inner_iters >= 1")
        if not 2 <= self.lr_bits <= 8:
            raise ConfigError(f"caldera: lr_bits must be from 2 to 8, got {self.lr_bits}")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"caldera: damp must be in [0, 1), got {self.damp}")


def _werr(D: torch.Tensor, H: torch.Tensor) -> float:
    return float(((D @ H) * D).sum())


def caldera(W: torch.Tensor, H: torch.Tensor, c: CALDERAConfig):
    """Returns (Q codes, scale, zero), (A^T codes, scale, zero), (R codes, scale, zero) of the best round."""
    m, n = W.shape
    r = min(c.rank, m, n)
    Hd = H.double() + torch.eye(n, dtype=torch.float64, device=H.device) * (c.damp * torch.diagonal(H).mean())
    ga, gb = factor_group(c.lr_group, m), factor_group(c.lr_group, n)
    LR = torch.zeros_like(W)
    A = Rq = None
    best = (float("inf"), None)
    # Every GPTQ step below (Q of m x n, R of r x n) runs on the same H: its factor U once per layer
    U = prepare_hessian(W, H, c.damp, method="caldera").hinv_chol
    for _ in range(c.iters):
        qcodes = gptq_quantize(W - LR, H, bits=c.q_bits, group_size=c.group_size, damp=c.damp, hinv_chol=U)
        E = W - dequantize_grouped(*qcodes, resolve_group_size(c.group_size, W.shape[1]))
        if r == 0:
            return qcodes, None, None
        if A is None:
            A, _, _ = whitened_factors(E, H, r, c.damp)
        for _ in range(c.inner_iters):
            acodes = quantize_grouped(A.T, AffineSpec(c.lr_bits, ga))
            Lq = dequantize_grouped(*acodes).T.double()
            G = Lq.T @ Lq
            G += torch.eye(r, dtype=G.dtype, device=G.device) * (1e-6 * torch.diagonal(G).mean().clamp_min(1e-12))
            R = torch.linalg.solve(G, Lq.T @ E.double()).float()
            rcodes = gptq_quantize(R, H, bits=c.lr_bits, group_size=gb, damp=c.damp, hinv_chol=U)
            Rq = dequantize_grouped(*rcodes).double()
            M = Rq @ Hd @ Rq.T
            M += torch.eye(r, dtype=M.dtype, device=M.device) * (1e-6 * torch.diagonal(M).mean().clamp_min(1e-12))
            A = torch.linalg.solve(M, Rq @ Hd @ E.double().T).T.float()  # A = E H Rq^T (Rq H Rq^T)^-1
        acodes = quantize_grouped(A.T, AffineSpec(c.lr_bits, ga))
        LR = (dequantize_grouped(*acodes).T.double() @ Rq).float()
        err = _werr(E - LR, H.float())
        if err >= best[0]:
            break  # the GPTQ step is not a minimizer, so rounds need not improve: stop at the first that does not
        best = (err, (qcodes, acodes, rcodes))
    return best[1]


@register_method
class CALDERA(Method):
    name = "caldera"
    Config = CALDERAConfig
    needs = frozenset({XTX})

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> LowRankLinear:
        if stats is None:
            raise ConfigError("caldera needs calibration data (X^T X); do not pass --nsamples 0")
        c = self.config
        m, n = weight.shape
        H = stats.hessian(c.modality).to(weight.device).float()
        qcodes, acodes, rcodes = caldera(weight.detach().float(), H, c)
        r = 0 if acodes is None else acodes[0].shape[0]
        mod = LowRankLinear(n, m, bias is not None, rank=r, lr_bits=c.lr_bits, a_group=c.lr_group,
                            b_group=c.lr_group, base_bits=c.q_bits, base_group_size=c.group_size)
        mod.set_base(*qcodes)
        if r:
            mod.set_factor_codes("lr_a", *acodes)
            mod.set_factor_codes("lr_b", *rcodes)
        mod.set_bias(bias)
        return mod
