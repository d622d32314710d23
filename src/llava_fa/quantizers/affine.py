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
    """-1 means one group per row; a size that does not divide the width leaves a shorter last group."""
    if group_size == -1:
        return in_features
    if group_size <= 0:
        raise ValueError(f"group size must be positive or -1 (one group per row), got {group_size}")
    return min(group_size, in_features)


def group_count(in_features: int, group_size: int) -> int:
    """Groups per row: ceil(width / size). Where the size does not divide the width (vision towers:
    Qwen2.5-VL's 3420, SigLIP's 4304) the last group is shorter, as compressed-tensors stores it."""
    return -(-in_features // group_size)


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
    wg = pad_to_groups(w.float(), g).reshape(out_f, -1, g)
    scale, zero = fit(wg, spec.bits, spec.sym)
    codes = quantize(wg, scale[..., None], zero[..., None], spec.bits)
    return codes.reshape(out_f, -1)[:, :in_f], scale, zero


def pad_to_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """`w` with zero columns appended up to whole groups. Every grid contains 0 (fit widens the
    range to include it), so the padding never changes a group's scale or zero."""
    short = -w.shape[-1] % group_size
    return torch.nn.functional.pad(w, (0, short)) if short else w


def dequantize_grouped(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                       group_size: int | None = None) -> torch.Tensor:
    """Weights (out, in) from codes (out, in) and scale/zero (out, ceil(in / group_size)). The size
    can be left out where the groups divide the width (then it is in / groups)."""
    in_f, n_groups = codes.shape[-1], scale.shape[-1]
    if group_size is None:
        if in_f % n_groups:
            raise ValueError(f"{n_groups} groups do not divide a width of {in_f}: pass the group size")
        group_size = in_f // n_groups
    group = torch.arange(in_f, device=codes.device) // group_size
    return dequantize(codes, scale[:, group], zero[:, group])
