"""`arb`: ARB-LLM's alternating refined binarization (Li et al., 2024): per row and group, mean,
scale and signs updated in turn (`iters` rounds), on BiLLM's salient-column / bitmap structure,
inside GPTQ-style blocks with error feedback."""

from __future__ import annotations

from dataclasses import dataclass

from llava_fa.calibration.stats import XTX
from llava_fa.methods.base import register_method
from llava_fa.methods.binary_common import BinaryConfig, FamilyMethod


@dataclass
class ARBConfig(BinaryConfig):
    iters: int = 15
    salient: bool = True
    bitmap: bool = True


@register_method
class ARB(FamilyMethod):
    name = "arb"
    Config = ARBConfig
    needs = frozenset({XTX})
    kind = "arb"
