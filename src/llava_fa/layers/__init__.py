"""Compressed Linear modules, one class per storage format, and the registry of formats."""

from llava_fa.layers.registry import FORMATS, get_format, register_format  # noqa: I001
from llava_fa.layers.base import CompressedLinear, set_forward_mode
from llava_fa.layers.affine import AffineLinear

__all__ = ["FORMATS", "get_format", "register_format", "CompressedLinear", "AffineLinear", "set_forward_mode"]
