"""Uniform affine (asymmetric or symmetric) quantization with groups along the input axis.

Conventions follow GPTQ: codes q in [0, 2^b - 1], w_hat = scale * (q - zero), an integer zero
point, and a grid that always contains 0 (the range is widened to include it) so that zero
weights stay exactly zero. Scales are rounded to float16 *before* the codes are chosen, because
float16 is what is stored: the error a method optimizes is then the error of the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.quantizers.float16 import f16_up



@dataclass(frozen=True)
class AffineSpec:
    bits: int
    group_size: int  # columns per group; resolved (never -1) once a width is known
    sym: bool = False

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1


def resolve_group_size(group_size: int, in_features: int) -> int:
    """-1 means one group per row; any other size must divide the width exactly."""
    if group_size == -1:
        return in_features
    if group_size <= 0:
        raise ValueError(f"group size must be positive or -1 (one group per row), got {group_size}")
    if in_features % group_size:
        raise ValueError(
            f"input width {in_features} is not divisible by the group size {group_size}; "
            f"pick a divisor of {in_features} (e.g. {_divisor_hint(in_features, group_size)}) "
            f"or -1 for one group per row"
        )
    return group_size


def _divisor_hint(n: int, near: int) -> int:
    """A group size to suggest: the largest power of two up to `near` that divides `n`."""
    powers = [1 << k for k in range(16) if (1 << k) <= near and n % (1 << k) == 0]
    return max(powers) if powers else 1


def fit(w: torch.Tensor, bits: int, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for each row of `w` (..., k): min/max over the last axis.

    Returns float32 tensors of shape (...,): the scale holds a float16-representable value and the
    zero an integer in [0, 2^b - 1].
    """
    maxq = (1 << bits) - 1
    w = w.float()
    lo = w.amin(-1).clamp(max=0)
    hi = w.amax(-1).clamp(min=0)
    # An all-zero group gets a unit range: any positive scale reproduces it exactly.
    if sym:
        if bits < 2:
            raise ValueError("symmetric quantization needs at least 2 bits")
        hi = torch.maximum(-lo, hi)
        hi = torch.where(hi == 0, torch.ones_like(hi), hi)
        lo = -hi
    else:
        hi = torch.where(hi == lo, torch.ones_like(hi), hi)
    scale = f16_up((hi - lo) / maxq)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero




def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of `w` for broadcastable `scale`/`zero` (int64, in [0, 2^b - 1])."""
    maxq = (1 << bits) - 1
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, maxq).to(torch.int64)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (codes.float() - zero)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return dequantize(quantize(w, scale, zero, bits), scale, zero)


def quantize_grouped(w: torch.Tensor, spec: AffineSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of a (out, in) matrix: codes (out, in), scale and zero (out, in/group)."""
    out_f, in_f = w.shape
    g = resolve_group_size(spec.group_size, in_f)
    wg = w.float().reshape(out_f, in_f // g, g)
    scale, zero = fit(wg, spec.bits, spec.sym)
    codes = quantize(wg, scale[..., None], zero[..., None], spec.bits)
    return codes.reshape(out_f, in_f), scale, zero


def dequantize_grouped(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    out_f, in_f = codes.shape
    n_groups = scale.shape[-1]
    cg = codes.reshape(out_f, n_groups, in_f // n_groups)
    return dequantize(cg, scale[..., None], zero[..., None]).reshape(out_f, in_f)
