"""`hadamard`: randomized Hadamard rotation of the input dimension, then RTN or GPTQ (QuaRot/QuIP#-style
incoherence processing as a baseline). W_r = W R^T is quantized (GPTQ with the rotated Hessian
R H R^T); the `hadamard` format stores the codes of W_r and the sign vector, and dequantize() applies
the inverse rotation. See format.py for the block-diagonal Hadamard used for widths that are not
powers of two. Defaults: 4 bits, groups of 64, asymmetric, base gptq (as QuaRot; `base rtn` needs no
calibration data), seed 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, MethodConfig, register_method
from llava_fa.methods.common import check_affine_options, check_group_divides
from llava_fa.methods.gptq import gptq_quantize
from llava_fa.formats.hadamard import HadamardLinear
from llava_fa.transforms.hadamard import (fwht, hadamard_block, random_signs, rotate_hessian, rotate_weight,
                                           unrotate_weight)
from llava_fa.quantizers import AffineSpec, quantize_grouped

__all__ = ["HadamardConfig", "Hadamard", "HadamardLinear", "fwht", "hadamard_block", "random_signs",
           "rotate_hessian", "rotate_weight", "unrotate_weight"]


@dataclass
class HadamardConfig(MethodConfig):
    bits: int = 4
    group_size: int = 64
    sym: bool = False
    base: Literal["rtn", "gptq"] = "gptq"
    seed: int = 0
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    modality: Literal["all", "text", "image"] = "all"

    def check(self) -> None:
        check_affine_options("hadamard", self.bits, self.group_size, self.sym)
        if self.base not in ("rtn", "gptq"):
            raise ConfigError(f"hadamard: base must be rtn or gptq, got {self.base!r}")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"hadamard: damp must be in [0, 1), got {self.damp}")


@register_method
class Hadamard(Method):
    name = "hadamard"
    Config = HadamardConfig
    needs = frozenset({XTX})

    def __init__(self, config: HadamardConfig | None = None):
        super().__init__(config)
        if self.config.base == "rtn":
            self.needs = frozenset()

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        check_group_divides(self.name, name, linear.weight, self.config.group_size)

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> HadamardLinear:
        c = self.config
        m, n = weight.shape
        block = hadamard_block(n)
        d = random_signs(n, c.seed).to(weight.device).float()
        Wr = rotate_weight(weight.detach().float(), d, block)
        if c.base == "gptq":
            if stats is None:
                raise ConfigError("hadamard with base gptq needs calibration data (X^T X); use --base rtn")
            Hr = rotate_hessian(stats.hessian(c.modality).to(weight.device), d, block)
            codes, scale, zero = gptq_quantize(Wr, Hr, bits=c.bits, group_size=c.group_size, sym=c.sym,
                                               damp=c.damp, block_size=c.block_size, act_order=c.act_order)
        else:
            codes, scale, zero = quantize_grouped(Wr, AffineSpec(c.bits, c.group_size, c.sym))
        # from_codes builds the skeleton with the default block, hadamard_block(n), the one used here.
        mod = HadamardLinear.from_codes(codes, scale, zero, bits=c.bits, sym=c.sym, bias=bias)
        mod.set_signs(d)
        return mod
