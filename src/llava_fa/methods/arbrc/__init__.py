"""`arb-rc`: ARB-LLM's row-column binarization W_b = diag(alpha_r) B diag(alpha_c) (no mean), row
scales per group of the column-group bitmap (salient columns + magnitude bitmap; the salient
columns add an order-2 ARB residual), alternating closed-form updates of alpha_r and alpha_c."""

from __future__ import annotations

from dataclasses import dataclass

from llava_fa.calibration.stats import XTX
from llava_fa.methods.base import register_method
from llava_fa.methods.binary_common import BinaryConfig, FamilyMethod


@dataclass
class ARBRCConfig(BinaryConfig):
    iters: int = 15
    salient: bool = True
    bitmap: bool = True


@register_method
class ARBRC(FamilyMethod):
    name = "arb-rc"
    Config = ARBRCConfig
    needs = frozenset({XTX})
    kind = "rc"
