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


def require_triton(kernel: str) -> None:
    """A clear error where a kernel is called without Triton (its callers check `available` first)."""
    if triton is None:
        raise RuntimeError(f"the {kernel} kernel needs Triton (it comes with CUDA builds of torch). "
                           "Fix: use forward_mode 'cached' or 'dequant', or install a CUDA build of torch.")


def as_rows(x: torch.Tensor) -> tuple[torch.Size, torch.Tensor]:
    """(leading shape, x as a (tokens, features) matrix with unit stride along the features)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x.shape[:-1], x2 if x2.stride(-1) == 1 else x2.contiguous()
