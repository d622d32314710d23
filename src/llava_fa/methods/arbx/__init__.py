"""`arb-x`: ARB-LLM's calibration-aware variant: after ARB, each row's (mean, scale) per group is
refit to minimize the output error (W - W_b) X^T X (W - W_b)^T of the block, signs following."""

from __future__ import annotations

from dataclasses import dataclass

from llava_fa.calibration.stats import XTX
from llava_fa.methods.base import register_method
from llava_fa.methods.binary_common import BinaryConfig, FamilyMethod


@dataclass
class ARBXConfig(BinaryConfig):
    iters: int = 15
    salient: bool = True
    bitmap: bool = True


@register_method
class ARBX(FamilyMethod):
    name = "arb-x"
    Config = ARBXConfig
    needs = frozenset({XTX})
    kind = "arb-x"
    requires_stats = True
