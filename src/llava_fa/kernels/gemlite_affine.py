"""`affine` layers through gemlite's Triton GEMV/GEMM kernels (github.com/mobiusml/gemlite, optional).

gemlite runs weight-only grouped integer codes with the same convention as the `affine` format,
w = scale * (code - zero), for 1, 2, 4 and 8 bits, float16 or bfloat16 activations. Its own packing
(codes re-packed over the input axis into 32-bit words) is built from our stored codes the first
time a layer runs on a device and dtype, and kept beside them (not in the state_dict; dropped on
`.to()` and `load_state_dict` like every cached form): the layer then holds the compressed form
twice, never a dense weight. gemlite autotunes its kernels on the first call of each shape.

Install with `pip install gemlite` (needs triton >= 3.6); without it `available()` is False.
"""

from __future__ import annotations

import torch

try:
    from gemlite.helper import A16Wn
except ImportError:  # pragma: no cover - depends on the installation
    A16Wn = None

SUPPORTED_BITS = (1, 2, 4, 8)
_DTYPES = (torch.float16, torch.bfloat16)


def available(layer, x: torch.Tensor) -> bool:
    """Whether gemlite can run `layer` (an AffineLinear) on `x`."""
    return (A16Wn is not None and x.is_cuda and x.dtype in _DTYPES and layer.bits in SUPPORTED_BITS
            and layer.in_features % 32 == 0 and layer.group_size >= 16
            and layer.in_features % layer.group_size == 0)  # no shorter last group


def gemlite_layer(layer, device: torch.device, dtype: torch.dtype):
    """gemlite's module for `layer`, built once per device and dtype from the stored codes."""
    cache = layer.__dict__.setdefault("_cache", {})
    key = ("gemlite", device, dtype)
    if key not in cache:
        scale, zero = layer.scale_zero()
        codes = layer.codes().to(torch.uint8)
        cache[key] = A16Wn(device=device, dtype=dtype).from_weights(
            codes.to(device), scale.to(device, dtype), zero.to(device, dtype), W_nbits=layer.bits,
            group_size=layer.group_size, bias=None)
    return cache[key]


def gemlite_matmul(layer, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T (no bias) with gemlite; x (..., in_features) float16 or bfloat16 on CUDA."""
    module = gemlite_layer(layer, x.device, x.dtype)
    y = module(x.reshape(-1, layer.in_features))
    return y.reshape(*x.shape[:-1], layer.out_features)
