"""`affine`: bit-packed uniform affine codes with one float16 scale (and zero) per group.

Stored tensors (b = bits, G = ceil(in_features / group_size) groups per row; where the size does not
divide the width the last group is shorter, as compressed-tensors stores it):
- `qweight` uint8 (out, ceil(in/8)*b): codes packed row by row;
- `scales` int16 (out, G): the float16 bit patterns of the scales. Kept as integers so that a
  `model.to(dtype)` or `from_pretrained(dtype=...)` cannot silently widen them (and change the
  bits per weight or the rounding the method optimized against);
- `qzeros` uint8 (ceil(out*G/8)*b,): zero points packed as one stream (absent when `sym`).

Forward modes: "auto", "cached" and "dequant" as for every format (formats/base.py; "auto" tries the
fused kernel first), and "fused": one Triton
kernel unpacks each tile of codes and multiplies it (`kernels/affine_matmul.py`), so W is never
formed; where Triton cannot run (CPU tensors, CPU builds of torch) "fused" computes what "dequant"
does, which keeps the same memory promise.
"""

from __future__ import annotations

import torch

from llava_fa.kernels import affine_matmul, gemlite_affine
from llava_fa.formats.base import Backend, CompressedLinear, dequant_forward
from llava_fa.formats.registry import register_format
from llava_fa.quantizers import dequantize_grouped, group_count, pack, packed_width, resolve_group_size, unpack


@register_format
class AffineLinear(CompressedLinear):
    format = "affine"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, bits: int, group_size: int,
                 sym: bool = False):
        super().__init__(in_features, out_features, bias)
        self.bits, self.sym = int(bits), bool(sym)
        self.group_size = resolve_group_size(int(group_size), in_features)
        n_groups = group_count(in_features, self.group_size)
        u8 = torch.uint8
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features, self.bits), dtype=u8))
        self.register_buffer("scales", torch.zeros(out_features, n_groups, dtype=torch.int16))
        if not self.sym:
            self.register_buffer("qzeros", torch.zeros(packed_width(out_features * n_groups, self.bits), dtype=u8))

    def params(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "sym": self.sym}

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int, sym: bool,
                   bias: torch.Tensor | None = None, group_size: int | None = None) -> "AffineLinear":
        """Build from codes (out, in), float scales and integer zeros (out, G). The group size can be
        left out where the groups divide the width."""
        out_f, in_f = codes.shape
        group_size = in_f // scale.shape[1] if group_size is None else resolve_group_size(group_size, in_f)
        if group_count(in_f, group_size) != scale.shape[1]:
            raise ValueError(f"{scale.shape[1]} scales per row do not fit a width of {in_f} in groups of {group_size}")
        mod = cls(in_f, out_f, bias is not None, bits=bits, group_size=group_size, sym=sym)
        mod.qweight = pack(codes, bits)
        mod.scales = scale.to(torch.float16).view(torch.int16).contiguous()
        if not sym:
            mod.qzeros = pack(zero.reshape(-1).round().to(torch.int64), bits)
        mod.set_bias(bias)
        return mod

    def codes(self) -> torch.Tensor:
        return unpack(self.qweight, self.bits, self.in_features)

    def scale_zero(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scales.view(torch.float16).float()
        if self.sym:
            zero = torch.full_like(scale, 1 << (self.bits - 1))
        else:
            zero = unpack(self.qzeros, self.bits, scale.numel()).reshape(scale.shape).float()
        return scale, zero

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale, zero = self.scale_zero()
        return dequantize_grouped(self.codes(), scale, zero, self.group_size).to(dtype)


def fused_forward(layer: AffineLinear, x: torch.Tensor) -> torch.Tensor:
    """One Triton kernel unpacks each tile of codes and multiplies it: W is never formed. The codes stay
    row-major as stored: keeping them column-major (converted in place, commit 2264caf) was 1.5-2.6x
    slower per layer on the H200 at batch 1 (docs/results/kernels_h200/affine_eager.md against
    bench_kernels_default.md)."""
    y = affine_matmul.affine_matmul(x, layer.qweight, layer.scales, None if layer.sym else layer.qzeros,
                                    layer.bits, layer.group_size, layer.out_features)
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


def gemlite_forward(layer: AffineLinear, x: torch.Tensor) -> torch.Tensor:
    """gemlite's kernels on its own packing of our codes (kernels/gemlite_affine.py)."""
    y = gemlite_affine.gemlite_matmul(layer, x)
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


def _half_on_triton(layer: AffineLinear, x: torch.Tensor) -> bool:
    """The default mode uses the kernel for float16/bfloat16 activations; float32 ones (TF32 inside
    the kernel's dot) keep the dequantized weight's full precision."""
    return x.dtype in (torch.float16, torch.bfloat16) and affine_matmul.available(x)


# "fused" falls back to "dequant" where Triton cannot run (CPU tensors, CPU builds of torch): the
# same memory promise, computed without the kernel. "gemlite" (where installed) falls back to "fused".
_FUSED = (Backend(fused_forward, lambda layer, x: affine_matmul.available(x)), Backend(dequant_forward))
AffineLinear.backends = {**CompressedLinear.backends, "fused": _FUSED,
                         "auto": (Backend(fused_forward, _half_on_triton), *CompressedLinear.backends["auto"]),
                         "gemlite": (Backend(gemlite_forward, gemlite_affine.available), *_FUSED)}
