"""The binarization family's variants, registered from one table: billm, arb, arb-x, arb-rc, pb-llm.

Each variant is a name, the block binarizer it runs (blocks.py), its options class and a one-line
summary; all share the blocked driver with GPTQ error feedback (driver.py) and store `binary`.
- billm (Huang et al., 2024): Hessian-salient columns with order-2 residual binarization, the
  non-salient weights split at a searched magnitude threshold into two groups (bitmap), each
  group binarized with a per-row mean and scale.
- arb (ARB-LLM, Li et al., 2024): the same structure, mean, scale and signs of each group updated
  in turn (`iters` rounds).
- arb-x: after ARB, each row's (mean, scale) per group refit to minimize the block's output error
  (W - W_b) X^T X (W - W_b)^T, signs following.
- arb-rc: W_b = diag(alpha_r) B diag(alpha_c) (no mean), row scales per group of the bitmap,
  alternating closed-form updates of alpha_r and alpha_c; salient columns add an ARB residual.
- pb-llm (Shang et al., 2023): the `salient_frac` most Hessian-salient weights of each block kept
  at 8 bits (symmetric, per-row scale; positions as a 1-bit mask, cheaper than indices above ~3%
  density), the rest binarized with scale mean|W| (PB-GPTQ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats.binary import BinaryLinear, BinaryParts
from llava_fa.methods.base import Method, register_method
from llava_fa.methods.binary.blocks import family_block, pb_block
from llava_fa.methods.binary.config import ARBConfig, BiLLMConfig, BinaryConfig, PBLLMConfig
from llava_fa.methods.binary.driver import blocked_binarize, concat_parts


@dataclass(frozen=True)
class Variant:
    name: str  # the method's name
    class_name: str  # the Method class registered for it
    kind: str  # block binarizer: family_block's kind, or "pb" for pb_block
    options: type[BinaryConfig]  # its options and their defaults
    summary: str  # what `--help-method` says about it
    requires_stats: bool = False  # refuse to run without calibration (else: identity H, no feedback)


VARIANTS = (
    Variant("billm", "BiLLM", "billm", BiLLMConfig,
            "BiLLM (Huang et al., 2024): salient columns binarized to order 2, the other weights in two "
            "magnitude groups, per-row means and scales, with GPTQ error feedback."),
    Variant("arb", "ARB", "arb", ARBConfig,
            "ARB-LLM's alternating refined binarization (Li et al., 2024): mean, scale and signs updated "
            "in turn on BiLLM's groups."),
    Variant("arb-x", "ARBX", "arb-x", ARBConfig,
            "ARB-LLM's calibration-aware ARB: each group's mean and scale refit to the block's output "
            "error under X^T X.", requires_stats=True),
    Variant("arb-rc", "ARBRC", "rc", ARBConfig,
            "ARB-LLM's row-column binarization diag(alpha_r) B diag(alpha_c), alternating closed-form "
            "scale updates."),
    Variant("pb-llm", "PBLLM", "pb", PBLLMConfig,
            "Partially binarized LLM (Shang et al., 2023): the most Hessian-salient weights kept at 8 bits, "
            "the rest binarized."),
)


def hessian_or_none(stats: LayerStats | None, modality: str, device, required: bool, name: str):
    if stats is None:
        if required:
            raise ConfigError(f"{name} needs calibration data (X^T X); do not pass --nsamples 0")
        return None  # identity Hessian: no error feedback, salience = W^2
    return stats.hessian(modality).to(device)


class BinaryMethod(Method):
    """A variant of the family: the blocked driver around its block binarizer (`kind`)."""

    needs = frozenset({XTX})
    kind: ClassVar[str] = ""
    requires_stats: ClassVar[bool] = False

    def fit_block(self, W1: torch.Tensor, U1: torch.Tensor, H1: torch.Tensor, cols: slice) -> BinaryParts:
        c = self.config
        if self.kind == "pb":
            return pb_block(W1, U1, c.salient_frac)
        return family_block(W1, U1, H1, kind=self.kind, iters=getattr(c, "iters", 0), salient=c.salient,
                            bitmap=c.bitmap, max_salient_frac=c.max_salient_frac)

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> BinaryLinear:
        c = self.config
        H = hessian_or_none(stats, c.modality, weight.device, self.requires_stats, self.name)
        parts, _ = blocked_binarize(weight, H, self.fit_block, block_size=c.block_size, damp=c.damp,
                                    method=self.name)
        return BinaryLinear.from_parts(concat_parts(parts), block_size=c.block_size, bias=bias)


def register_variant(v: Variant) -> type[BinaryMethod]:
    """The Method class of a variant (with its own options class, so errors name the method), registered."""
    config = type(f"{v.class_name}Config", (v.options,), {"method": v.name, "__module__": __name__})
    cls = type(v.class_name, (BinaryMethod,), {"name": v.name, "Config": config, "kind": v.kind,
                                              "requires_stats": v.requires_stats, "__doc__": v.summary,
                                              "__module__": __name__})
    return register_method(cls)


VARIANT_METHODS = {v.name: register_variant(v) for v in VARIANTS}
