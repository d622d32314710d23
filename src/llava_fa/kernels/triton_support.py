"""Triton, where it is installed, and whether a kernel can run on a tensor: the one optional import
every kernel module shares.

Triton ships with CUDA builds of torch, not with the CPU build, so on CI and CPU-only machines
`triton` is None and every format keeps its other backends. `TRITON_INTERPRET=1` (set before the
kernels are imported) runs the kernels on CPU tensors, which is how the CPU tests check them.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = tl = None


def available(x: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on `x`'s device."""
    if triton is None:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
