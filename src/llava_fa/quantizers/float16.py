"""Float16 storage of scales, levels and factors: one owner for the rounding and the bit patterns.

Every format keeps its float16 values as int16 bit patterns, so that `model.to(dtype)` or
`from_pretrained(dtype=...)` cannot silently widen them (which would change the bits per weight or
the rounding the method optimized against).
"""

from __future__ import annotations

import torch

F16 = torch.finfo(torch.float16)


def f16_round(x: torch.Tensor) -> torch.Tensor:
    """Nearest float16 (clamped to its range), as float32."""
    return x.float().clamp(-F16.max, F16.max).half().float()


def f16_up(x: torch.Tensor) -> torch.Tensor:
    """Round positive scales up to float16 (rounded down, a grid would clip the group's max)."""
    x = x.float().clamp(F16.tiny, F16.max)
    h = x.half()
    up = torch.nextafter(h, torch.full_like(h, F16.max))
    return torch.where(h.float() < x, up, h).float()


def to_bits(x: torch.Tensor) -> torch.Tensor:
    """float16 bit patterns (int16) of x, clamped to the float16 range."""
    return x.detach().float().clamp(-F16.max, F16.max).half().view(torch.int16).contiguous()


def from_bits(t: torch.Tensor) -> torch.Tensor:
    """float32 values of stored float16 bit patterns."""
    return t.view(torch.float16).float()
