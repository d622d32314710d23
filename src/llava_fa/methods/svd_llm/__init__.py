"""`svd-llm`: truncation-aware data whitening + SVD (Wang et al., 2024), stored in `lowrank`.

With X^T X + damp * mean(diag) * I = L L^T (Cholesky), ||(W - W') X^T||_F = ||(W - W') L||_F, so the
truncated SVD of W L = U S V^T gives the activation-optimal rank-r approximation and each dropped
singular value is exactly the loss it causes (truncation-aware). A = U_r S_r^1/2, B = S_r^1/2 V_r^T
L^-1 (a triangular solve), float16 by default. `damp` (default 1e-4, relative) only makes X^T X
positive definite; it is raised tenfold until the Cholesky succeeds. Rank options as `asvd`,
default `param_ratio` 0.8 (the SVD-LLM paper's 20% compression ratio). SVD-LLM's optional
LoRA-style parameter update after truncation is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llava_fa.errors import ConfigError, DataError
from llava_fa.formats.lowrank import LowRankLinear, split_svd
from llava_fa.methods.asvd import RankOptions
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, option, register_method


@dataclass
class SVDLLMConfig(RankOptions):
    param_ratio: float = option(0.8, "rank from stored / dense parameters when neither rank nor bpw is set, "
                                     "in (0, 1] (0.8: the SVD-LLM paper's 20% compression)")
    damp: float = option(1e-4, "added to X^T X times its mean diagonal so that the Cholesky succeeds, in [0, 1); "
                               "raised tenfold until it does")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X whitens the weight")

    def check(self) -> None:
        self.check_rank("svd-llm")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"svd-llm: damp must be in [0, 1), got {self.damp}")


def whitening_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Lower Cholesky factor of H + damp * mean(diag H) * I (double), raising damp until it succeeds."""
    H = H.double()
    n = H.shape[0]
    mean = torch.diagonal(H).mean().clamp_min(1e-12)
    d = damp
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(H + torch.eye(n, dtype=H.dtype, device=H.device) * (d * mean))
        if int(info) == 0:
            return L
        d = max(d * 10, 1e-6)
    raise DataError("svd-llm: X^T X is not positive definite even with damping; use more calibration samples")


def whitened_factors(W: torch.Tensor, H: torch.Tensor, rank: int, damp: float):
    """A (m, r), B (r, n) minimizing ||(W - A B) L||_F, with L the damped Cholesky factor of H."""
    L = whitening_factor(H, damp)
    A, Bw, S = split_svd(W.double() @ L, rank)
    B = torch.linalg.solve_triangular(L, Bw.double(), upper=False, left=False)  # B L = Bw
    return A, B.float(), S


@register_method
class SVDLLM(Method):
    name = "svd-llm"
    Config = SVDLLMConfig
    needs = frozenset({XTX})

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> LowRankLinear:
        if stats is None:
            raise ConfigError("svd-llm needs calibration data (X^T X); do not pass --nsamples 0")
        c = self.config
        m, n = weight.shape
        r = c.resolve_rank(m, n)
        A, B, _ = whitened_factors(weight.detach().float(), stats.xtx_sum(c.modality).to(weight.device), r, c.damp)
        return LowRankLinear.build(m, n, A=A, B=B, lr_bits=c.lr_bits, a_group=c.lr_group, b_group=c.lr_group,
                                   bias=bias)
