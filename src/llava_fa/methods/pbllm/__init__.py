"""`pb-llm`: partially binarized LLM (Shang et al., 2023): the `salient_frac` most Hessian-salient
weights (W^2 / diag(U)^2, per block) kept at 8 bits (symmetric, per-row scale; positions stored as a
1-bit mask, cheaper than indices above ~3% density), the rest binarized with scale mean|W|, inside
GPTQ-style blocks with error feedback (PB-GPTQ)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.errors import ConfigError
from llava_fa.formats.binary import BinaryLinear
from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.methods.base import Method, register_method
from llava_fa.methods.binary_common import BinaryConfig, hessian_or_none
from llava_fa.quantizers.binarize import blocked_binarize, concat_parts, pb_block


@dataclass
class PBLLMConfig(BinaryConfig):
    salient_frac: float = 0.1

    def check(self) -> None:
        super().check()
        if not 0 <= self.salient_frac < 1:
            raise ConfigError(f"pb-llm: salient_frac must be in [0, 1), got {self.salient_frac}")


@register_method
class PBLLM(Method):
    name = "pb-llm"
    Config = PBLLMConfig
    needs = frozenset({XTX})

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> BinaryLinear:
        c = self.config
        H = hessian_or_none(stats, c.modality, weight.device, False, self.name)
        parts, _ = blocked_binarize(weight, H, lambda W1, U1, H1, cols: pb_block(W1, U1, c.salient_frac),
                                    block_size=c.block_size, damp=c.damp)
        return BinaryLinear.from_parts(concat_parts(parts), block_size=c.block_size, bias=bias)
