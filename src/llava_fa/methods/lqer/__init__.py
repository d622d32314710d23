"""`lqer`: low-rank quantization error reconstruction, L2QER variant (Zhang et al., 2024): a per-group
RTN base plus a low-rank fit of its error, weighted by the input channels' RMS. Stored in `lowrank`.

W ~= Q(W) + A B: Q = per-group RTN (`bits`, `group_size`); E = W - Q; with s = sqrt(mean x^2) per
input channel (L2QER's activation scale), E diag(s) = U S V^T truncated to `rank` (default 32):
A = U_r S_r^1/2, B = S_r^1/2 V_r^T diag(1/s) (folded into B before B is quantized). The factors are
stored at `lr_bits` (default 8, as LQER's W4A8 setting keeps the low-rank matrices in 8 bits; here
affine codes per group of `lr_group`; 16 stores float16). Without statistics s = 1 (plain LQER).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.formats.lowrank import LowRankLinear, split_svd
from llava_fa.methods.asvd import channel_scale
from llava_fa.calibration.stats import SQ, LayerStats
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.common import FACTOR_GROUP_HELP, check_affine_options
from llava_fa.quantizers import AffineSpec, dequantize_grouped, quantize_grouped, resolve_group_size


@dataclass
class LQERConfig(MethodConfig):
    bits: int = option(4, "bits per code of the RTN base Q, 1 to 8")
    group_size: int = option(64, "weights per scale and zero of Q, consecutive along a row; -1: one group per row")
    rank: int = option(32, "rank of the error correction A B, capped at min(m, n); 0: Q alone")
    lr_bits: int = option(8, "factor storage: 16 = float16, 2 to 8 = affine codes per group of lr_group "
                             "(8: LQER's W4A8 setting)")
    lr_group: int = option(64, FACTOR_GROUP_HELP)
    modality: Literal["all", "text", "image"] = option("all", "tokens whose statistics give the channel RMS s")

    def check(self) -> None:
        check_affine_options("lqer", self.bits, self.group_size, False)
        if self.rank < 0:
            raise ConfigError(f"lqer: rank must be >= 0, got {self.rank}")
        if self.lr_bits != 16 and not 2 <= self.lr_bits <= 8:
            raise ConfigError(f"lqer: lr_bits must be 16 or from 2 to 8, got {self.lr_bits}")


@register_method
class LQER(Method):
    name = "lqer"
    Config = LQERConfig
    needs = frozenset({SQ})

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> LowRankLinear:
        c = self.config
        m, n = weight.shape
        W = weight.detach().float()
        base = quantize_grouped(W, AffineSpec(c.bits, c.group_size, False))
        r = min(c.rank, m, n)
        if r == 0:
            return LowRankLinear.build(m, n, base=base, base_bits=c.bits, bias=bias, base_group=c.group_size)
        s = channel_scale(stats, n, c.modality).to(W.device)
        A, B, _ = split_svd((W - dequantize_grouped(*base, resolve_group_size(c.group_size, n))) * s[None, :], r)
        return LowRankLinear.build(m, n, A=A, B=B / s[None, :], base=base, base_bits=c.bits, lr_bits=c.lr_bits,
                                   a_group=c.lr_group, b_group=c.lr_group, bias=bias,
                                   base_group=c.group_size)
