from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llava_fa.errors import ConfigError
from llava_fa.methods.base import MethodConfig
from llava_fa.methods.common import check_affine_options


@dataclass
class GPTQConfig(MethodConfig):
    bits: int = 4
    group_size: int = 64  # 64 divides the testbed's widths (576, 1536); 128 does not divide 576
    sym: bool = False
    damp: float = 0.01  # added to H's diagonal, as a fraction of its mean
    block_size: int = 128  # columns updated together (lazy batch updates); does not change the result
    act_order: bool = False  # quantize columns by decreasing H_jj; groups stay contiguous (static groups)
    modality: Literal["all", "text", "image"] = "all"  # tokens whose X^T X forms H

    def check(self) -> None:
        check_affine_options("gptq", self.bits, self.group_size, self.sym)
        if not 0 <= self.damp < 1:
            raise ConfigError(f"gptq: --damp must be in [0, 1), got {self.damp}")
        if self.block_size < 1:
            raise ConfigError(f"gptq: block_size must be positive, got {self.block_size}")
