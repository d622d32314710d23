"""The options of the binarization family: shared ones, and those of each variant's options class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from llava_fa.errors import ConfigError
from llava_fa.methods.base import MethodConfig, option


@dataclass
class BinaryConfig(MethodConfig):
    method: ClassVar[str] = "binarization"  # the method's name in error messages (set per variant)

    block_size: int = option(128, "GPTQ-style column blocks; a last partial block is allowed "
                                  "(576 = 4*128 + 64)")
    damp: float = option(0.01, "added to H's diagonal, as a fraction of its mean")
    modality: Literal["all", "text", "image"] = option("all", "tokens whose X^T X forms H")
    # The searched error always falls with more order-2 columns, so the count needs a cap.
    max_salient_frac: float = option(0.08, "cap on the searched count of salient columns, as a fraction of "
                                           "the block (0.08, 10 of 128, keeps the code bits at <= 1.08 per "
                                           "weight, the papers' operating point); unused by pb-llm")

    def check(self) -> None:
        if self.block_size < 8:
            raise ConfigError(f"{self.method}: block_size must be at least 8, got {self.block_size}")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"{self.method}: damp must be in [0, 1), got {self.damp}")
        if not 0 <= self.max_salient_frac <= 0.5:
            raise ConfigError(f"{self.method}: max_salient_frac must be in [0, 0.5], got {self.max_salient_frac}")
        if getattr(self, "iters", 1) < 0:
            raise ConfigError(f"{self.method}: iters must be >= 0")


@dataclass
class BiLLMConfig(BinaryConfig):
    salient: bool = option(True, "salient columns with order-2 residual binarization")
    bitmap: bool = option(True, "split the non-salient weights into two magnitude groups")


@dataclass
class ARBConfig(BinaryConfig):
    iters: int = option(15, "rounds of the alternating updates")
    salient: bool = option(True, "salient columns with order-2 residual binarization")
    bitmap: bool = option(True, "split the non-salient weights into two magnitude groups")


@dataclass
class PBLLMConfig(BinaryConfig):
    salient_frac: float = option(0.1, "fraction of the weights (the most Hessian-salient of each block) "
                                      "kept at 8 bits")

    def check(self) -> None:
        super().check()
        if not 0 <= self.salient_frac < 1:
            raise ConfigError(f"{self.method}: salient_frac must be in [0, 1), got {self.salient_frac}")
