"""The options of `gptq`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llava_fa.errors import ConfigError
from llava_fa.methods.base import MethodConfig, option
from llava_fa.methods.common import check_affine_options


@dataclass
class GPTQConfig(MethodConfig):
    bits: int = option(4, "bits per weight code")
    group_size: int = option(64, "columns per scale/zero group, -1 for one group per row (64 divides the "
                                 "testbed's widths 576 and 1536; 128 does not divide 576)")
    sym: bool = option(False, "symmetric grid (fixed zero point) instead of min/max affine")
    damp: float = option(0.01, "added to H's diagonal, as a fraction of its mean")
    block_size: int = option(128, "columns updated together (lazy batch updates); does not change the result")
    act_order: bool = option(False, "quantize columns by decreasing H_jj; groups stay contiguous (static groups)")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X forms H")

    def check(self) -> None:
        check_affine_options("gptq", self.bits, self.group_size, self.sym)
        if not 0 <= self.damp < 1:
            raise ConfigError(f"gptq: --damp must be in [0, 1), got {self.damp}")
        if self.block_size < 1:
            raise ConfigError(f"gptq: block_size must be positive, got {self.block_size}")
