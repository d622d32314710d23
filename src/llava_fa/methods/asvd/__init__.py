"""`asvd`: activation-aware SVD (Yuan et al., 2023), stored in the `lowrank` format.

W diag(s)^alpha = U S V^T, truncated to rank r: A = U_r S_r^1/2, B = S_r^1/2 V_r^T diag(s)^-alpha
(the unscaling folded into B, which costs nothing with float16 factors; `store_scale` keeps s^alpha
as a stored vector instead). ASVD's s is the mean |x| per input channel; our calibration statistics
hold sum x^2 (or X^T X), not sum |x|, so s = sqrt(mean x^2) (the RMS) is used: the same ordering of
channels for a fixed distribution shape, not the same values. Without statistics s = 1 (plain SVD).

Rank: `rank` if set, else the largest rank that fits `bpw` bits per weight if set, else the rank at
`param_ratio` (stored parameters / dense parameters; default 0.9, the ASVD paper's middle setting).
ASVD's sensitivity-based per-layer rank search is not implemented (one ratio for every layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llava_fa.errors import ConfigError
from llava_fa.formats.lowrank import LowRankLinear, max_rank_for_bits, split_svd
from llava_fa.calibration.stats import SQ, LayerStats
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.common import FACTOR_GROUP_HELP


@dataclass
class RankOptions(MethodConfig):
    """The rank and factor-storage options of the factor-only methods (asvd, svd-llm)."""

    rank: int | None = option(None, "rank of the factors, capped at min(m, n); overrides bpw and param_ratio")
    bpw: float | None = option(None, "target bits per weight: the largest rank whose layer fits, every stored "
                                     "bit counted; overrides param_ratio")
    param_ratio: float = option(0.9, "rank from stored / dense parameters when neither rank nor bpw is set, "
                                     "in (0, 1] (0.9: the ASVD paper's middle setting)")
    lr_bits: int = option(16, "factor storage: 16 = float16, 2 to 8 = affine codes per group of lr_group")
    lr_group: int = option(64, FACTOR_GROUP_HELP)

    def check_rank(self, method: str) -> None:
        if self.rank is not None and self.rank < 0:
            raise ConfigError(f"{method}: rank must be >= 0, got {self.rank}")
        if self.bpw is not None and self.bpw <= 0:
            raise ConfigError(f"{method}: bpw must be positive, got {self.bpw}")
        if not 0 < self.param_ratio <= 1:
            raise ConfigError(f"{method}: param_ratio must be in (0, 1], got {self.param_ratio}")
        if self.lr_bits != 16 and not 2 <= self.lr_bits <= 8:
            raise ConfigError(f"{method}: lr_bits must be 16 or from 2 to 8, got {self.lr_bits}")

    def resolve_rank(self, m: int, n: int, col_scale: bool = False) -> int:
        full = min(m, n)
        if self.rank is not None:
            return min(self.rank, full)
        if self.bpw is not None:
            return max_rank_for_bits(m, n, self.bpw * m * n, lr_bits=self.lr_bits, a_group=self.lr_group,
                                     b_group=self.lr_group, col_scale=col_scale)
        return min(full, int(self.param_ratio * m * n / (m + n)))


@dataclass
class ASVDConfig(RankOptions):
    alpha: float = option(0.5, "exponent of the channel scale s^alpha, >= 0 (0: plain SVD)")
    store_scale: bool = option(False, "store s^alpha as a vector instead of folding its inverse into B")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose statistics give the channel scale s")

    def check(self) -> None:
        self.check_rank("asvd")
        if self.alpha < 0:
            raise ConfigError(f"asvd: alpha must be >= 0, got {self.alpha}")


def channel_scale(stats: LayerStats | None, n: int, modality: str = "all") -> torch.Tensor:
    """sqrt(mean x^2) per input channel (ones without statistics), floored away from zero."""
    if stats is None:
        return torch.ones(n)
    s = stats.mean_sq(modality).float().clamp_min(0).sqrt()
    return s.clamp_min(max(s.max().item() * 1e-4, 1e-8))


@register_method
class ASVD(Method):
    name = "asvd"
    Config = ASVDConfig
    needs = frozenset({SQ})

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> LowRankLinear:
        c = self.config
        m, n = weight.shape
        W = weight.detach().float()
        sa = channel_scale(stats, n, c.modality).to(W.device).pow(c.alpha)
        r = c.resolve_rank(m, n, c.store_scale)
        A, B, _ = split_svd(W * sa[None, :], r)
        if not c.store_scale:
            B = B / sa[None, :]
        return LowRankLinear.build(m, n, A=A, B=B, lr_bits=c.lr_bits, a_group=c.lr_group, b_group=c.lr_group,
                                   col_scale=sa if c.store_scale else None, bias=bias)
