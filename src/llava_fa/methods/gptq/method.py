"""`gptq`: Hessian-aware rounding with error feedback (Frantar et al., 2022).

Columns are rounded one at a time onto an affine grid per group (`AffineColumns`), each column's
error pushed onto the columns still to come through the Cholesky factor of H^-1 (the shared loop of
quantizers/feedback.py), so the rounding minimizes the layer's output error, not the weight error.
On a GPU with Triton each block of columns runs as one kernel (kernels/gptq_block.py, same results).
Stored as `affine` codes.
"""

from __future__ import annotations

import torch
from torch import nn

from llava_fa.calibration.stats import XTX, LayerStats
from llava_fa.errors import ConfigError
from llava_fa.formats import AffineLinear
from llava_fa.kernels import gptq_block
from llava_fa.methods.base import Method, register_method
from llava_fa.methods.gptq.config import GPTQConfig
from llava_fa.quantizers import dequantize, fit, group_count, pad_to_groups, quantize, resolve_group_size
from llava_fa.quantizers.feedback import feedback_quantize, group_span
from llava_fa.quantizers.hessian import prepare_hessian


@register_method
class GPTQ(Method):
    name = "gptq"
    Config = GPTQConfig
    needs = frozenset({XTX})

    def compress(self, weight: torch.Tensor, stats: LayerStats | None,
                 bias: torch.Tensor | None = None) -> AffineLinear:
        if stats is None:
            raise ConfigError("gptq needs calibration data (X^T X); do not pass --nsamples 0")
        c = self.config
        H = stats.hessian(c.modality).to(weight.device)
        codes, scale, zero = gptq_quantize(weight, H, bits=c.bits, group_size=c.group_size, sym=c.sym, damp=c.damp,
                                           block_size=c.block_size, act_order=c.act_order)
        return AffineLinear.from_codes(codes, scale, zero, bits=c.bits, sym=c.sym, bias=bias, group_size=c.group_size)


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, *, bits: int, group_size: int, sym: bool = False,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  hinv_chol: torch.Tensor | None = None):
    """GPTQ on a (out, in) weight with Hessian H (in, in). Returns codes (out, in), scale, zero (out, G).
    `hinv_chol`: U of the same H and damp from an earlier call (quantizers/hessian.prepare_hessian).

    Groups are contiguous in the original column order, also with act-order (their scales are
    fitted up front on the original weight, "static groups"), so the result is a plain `affine`
    layer with no column permutation to store.
    """
    g = resolve_group_size(group_size, weight.shape[1])
    prepared = prepare_hessian(weight, H, damp, act_order=act_order, method="gptq", hinv_chol=hinv_chol)
    W, order = prepared.weight, prepared.order
    out_f, n = W.shape
    columns = torch.arange(n, device=W.device) if order is None else order
    rounder = AffineColumns(out_f, (columns // g).tolist(), group_count(n, g), bits, sym, W.device)
    if order is not None:
        # In act-order a group's first column is not met first: fit every group before the loop,
        # on the original column order ("static groups").
        rounder.scale, rounder.zero = fit(pad_to_groups(W[:, torch.argsort(order)], g).reshape(out_f, -1, g), bits, sym)
    feedback_quantize(W, prepared.hinv_chol, rounder, block_size=block_size,
                      group_size=None if order is not None else g)
    codes = rounder.codes if order is None else rounder.codes[:, torch.argsort(order)]
    return codes, rounder.scale, rounder.zero


class AffineColumns:
    """GPTQ's rounding: each column onto the affine grid (scale, zero per row) of its group.

    Codes are kept in loop order; scales and zeros per group of the original column order."""

    def __init__(self, out_features: int, group_of: list[int], n_groups: int, bits: int, sym: bool,
                 device: torch.device):
        self.group_of, self.bits, self.sym = group_of, bits, sym  # group_of: group of each loop position
        self.codes = torch.zeros(out_features, len(group_of), dtype=torch.int64, device=device)
        self.scale = torch.empty(out_features, n_groups, device=device)
        self.zero = torch.empty_like(self.scale)

    def fit_group(self, span: torch.Tensor, start: int) -> None:
        grp = self.group_of[start]
        self.scale[:, grp], self.zero[:, grp] = fit(span, self.bits, self.sym)

    def round(self, column: torch.Tensor, index: int) -> torch.Tensor:
        grp = self.group_of[index]
        s, z = self.scale[:, grp], self.zero[:, grp]
        q = quantize(column, s, z, self.bits)
        self.codes[:, index] = q
        return dequantize(q, s, z)

    def fused_block(self, W: torch.Tensor, W1: torch.Tensor, U: torch.Tensor, Q: torch.Tensor, i1: int,
                    group_size: int | None) -> torch.Tensor | None:
        """The block's column loop in one kernel (kernels/gptq_block.py), or None where it cannot run:
        no Triton on W's device, act-order (group_size None), groups that straddle the block."""
        n, i2 = W.shape[1], i1 + W1.shape[1]
        U1 = U[i1:i2, i1:i2]
        groups = gptq_block.kernel_groups(i1, W1.shape[1], n, group_size)
        if (groups is None or not gptq_block.can_run(W1, U1) or self.group_of[i1] != i1 // group_size
                or (self.sym and self.bits < 2)):  # the last: fit's error comes from the loop
            return None
        if groups == 0 and i1 % group_size == 0:
            # the group starts here and reaches past the block: fitted as the loop would at its first
            # column (no feedback from this block yet)
            self.fit_group(group_span(W, W1, torch.zeros_like(W1), U, i1, 0, min(i1 + group_size, n)), i1)
        return gptq_block.affine_block(W1, U1, self.scale, self.zero, self.codes[:, i1:i2], Q[:, i1:i2], group=groups,
                                       group0=self.group_of[i1], bits=self.bits, sym=self.sym)
