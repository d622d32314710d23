"""Shared config fields and compress() of the binarization family (billm, arb, arb-x, arb-rc, pb-llm, sab)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llava_fa.errors import ConfigError
from llava_fa.formats.binary import BinaryLinear, BinaryParts
from llava_fa.calibration.stats import LayerStats
from llava_fa.methods.base import Method, MethodConfig
from llava_fa.quantizers.binarize import blocked_binarize, concat_parts, family_block


@dataclass
class BinaryConfig(MethodConfig):
    block_size: int = 128  # GPTQ-style column blocks; a last partial block is allowed (576 = 4*128 + 64)
    damp: float = 0.01  # fraction of H's mean diagonal added to it
    modality: Literal["all", "text", "image"] = "all"  # tokens whose X^T X forms H
    # Salient columns (family methods): the searched count per block is capped at this fraction, since
    # the search error always falls with more order-2 columns. 0.08 (10 of 128) keeps the code bits at
    # <= 1.08 per weight, the papers' operating point. Unused by pb-llm.
    max_salient_frac: float = 0.08

    def check(self) -> None:
        if self.block_size < 8:
            raise ConfigError(f"{self._name()}: block_size must be at least 8, got {self.block_size}")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"{self._name()}: damp must be in [0, 1), got {self.damp}")
        if not 0 <= self.max_salient_frac <= 0.5:
            raise ConfigError(f"{self._name()}: max_salient_frac must be in [0, 0.5], got {self.max_salient_frac}")
        if getattr(self, "iters", 1) < 0:
            raise ConfigError(f"{self._name()}: iters must be >= 0")

    def _name(self) -> str:
        return type(self).__name__.replace("Config", "").lower()


def hessian_or_none(stats: LayerStats | None, modality: str, device, required: bool, name: str):
    if stats is None:
        if required:
            raise ConfigError(f"{name} needs calibration data (X^T X); do not pass --nsamples 0")
        return None  # identity Hessian: no error feedback, salience = W^2
    return stats.hessian(modality).to(device)


class FamilyMethod(Method):
    """billm / arb / arb-x / arb-rc: salient columns (order 2) + bitmap groups + a group fitter."""

    kind: str = ""
    requires_stats: bool = False

    def fit_block(self, W1, U1, H1, cols):
        c = self.config
        return family_block(W1, U1, H1, kind=self.kind, iters=getattr(c, "iters", 0), salient=c.salient,
                            bitmap=c.bitmap, max_salient_frac=c.max_salient_frac)

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> BinaryLinear:
        c = self.config
        H = hessian_or_none(stats, c.modality, weight.device, self.requires_stats, self.name)
        parts, _ = blocked_binarize(weight, H, self.fit_block, block_size=c.block_size, damp=c.damp)
        return BinaryLinear.from_parts(concat_parts(parts), block_size=c.block_size, bias=bias)


__all__ = ["BinaryConfig", "BinaryParts", "FamilyMethod", "hessian_or_none"]
