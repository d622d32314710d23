"""`billm`: BiLLM (Huang et al., 2024): Hessian-salient columns with order-2 residual binarization,
non-salient weights split at a searched magnitude threshold into two groups (bitmap), each group
binarized with a per-row mean and scale, inside GPTQ-style blocks with error feedback."""

from __future__ import annotations

from dataclasses import dataclass

from llava_fa.calibration.stats import XTX
from llava_fa.methods.base import register_method
from llava_fa.methods.binary_common import BinaryConfig, FamilyMethod


@dataclass
class BiLLMConfig(BinaryConfig):
    salient: bool = True  # salient columns with order-2 residual binarization
    bitmap: bool = True  # split the non-salient weights into two magnitude groups


@register_method
class BiLLM(FamilyMethod):
    name = "billm"
    Config = BiLLMConfig
    needs = frozenset({XTX})
    kind = "billm"
