"""`rtn`: per-group round-to-nearest, the calibration-free baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llava_fa.formats import AffineLinear
from llava_fa.calibration.stats import LayerStats
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.common import GROUP_SIZE_HELP, SYM_HELP, check_affine_options
from llava_fa.quantizers import AffineSpec, quantize_grouped


@dataclass
class RTNConfig(MethodConfig):
    bits: int = option(4, "bits per code, 1 to 8")
    # 64 divides the testbed's widths (576, 1536); 128 does not divide 576.
    group_size: int = option(64, GROUP_SIZE_HELP)
    sym: bool = option(False, SYM_HELP)

    def check(self) -> None:
        check_affine_options("rtn", self.bits, self.group_size, self.sym)


@register_method
class RTN(Method):
    name = "rtn"
    Config = RTNConfig
    needs = frozenset()

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> AffineLinear:
        c = self.config
        codes, scale, zero = quantize_grouped(weight, AffineSpec(c.bits, c.group_size, c.sym))
        return AffineLinear.from_codes(codes, scale, zero, bits=c.bits, sym=c.sym, bias=bias, group_size=c.group_size)
