"""`hadamard`: randomized Hadamard rotation of the input dimension, then RTN or GPTQ (QuaRot/QuIP#-style
incoherence processing as a baseline). Stored in the `hadamard` format.

W_r = W R^T is quantized (GPTQ with the rotated Hessian R H R^T); the `hadamard` format stores the
codes of W_r and the sign vector, and dequantize() applies the inverse rotation. The block-diagonal
Hadamard used for widths that are not powers of two is described in formats/hadamard.py (the
rotations live in transforms/hadamard.py). Defaults: 4 bits, groups of 64, asymmetric, base gptq
(as QuaRot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from llava_fa.errors import ConfigError
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, MethodConfig, option, register_method
from llava_fa.methods.common import GROUP_SIZE_HELP, SYM_HELP, check_affine_options
from llava_fa.methods.gptq import gptq_quantize
from llava_fa.formats.hadamard import HadamardLinear
from llava_fa.transforms.hadamard import (fwht, hadamard_block, random_signs, rotate_hessian, rotate_weight,
                                           unrotate_weight)
from llava_fa.quantizers import AffineSpec, quantize_grouped

__all__ = ["HadamardConfig", "Hadamard", "HadamardLinear", "fwht", "hadamard_block", "random_signs",
           "rotate_hessian", "rotate_weight", "unrotate_weight"]


@dataclass
class HadamardConfig(MethodConfig):
    bits: int = option(4, "bits per code of the rotated weight, 1 to 8")
    group_size: int = option(64, GROUP_SIZE_HELP)
    sym: bool = option(False, SYM_HELP)
    base: Literal["rtn", "gptq"] = option("gptq", "quantizer of the rotated weight; rtn needs no calibration data")
    seed: int = option(0, "seed of the random sign vector (the signs themselves are stored)")
    damp: float = option(0.01, "gptq: fraction of H's mean diagonal added to H, in [0, 1)")
    block_size: int = option(128, "gptq: columns updated together (lazy batch updates); does not change the result")
    act_order: bool = option(False, "gptq: quantize columns by decreasing H_jj; groups stay contiguous")
    modality: Literal["all", "text", "image"] = option("all", "gptq: tokens whose X^T X forms H")

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
        mod = HadamardLinear.from_codes(codes, scale, zero, bits=c.bits, sym=c.sym, bias=bias, group_size=c.group_size)
        mod.set_signs(d)
        return mod
