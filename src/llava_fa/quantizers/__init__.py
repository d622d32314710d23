"""Scalar quantizers and bit packing shared by the methods and the stored formats."""

from llava_fa.quantizers.affine import (
    AffineSpec,
    dequantize,
    dequantize_grouped,
    fake_quantize,
    fit,
    group_count,
    pad_to_groups,
    quantize,
    quantize_grouped,
    resolve_group_size,
)
from llava_fa.quantizers.packing import pack, packed_width, unpack

__all__ = [
    "AffineSpec", "dequantize", "dequantize_grouped", "fake_quantize", "fit", "group_count", "pad_to_groups", "quantize", "quantize_grouped",
    "resolve_group_size", "pack", "packed_width", "unpack",
]
