"""Block-diagonal randomized Hadamard rotations of the input dimension, R = H_blk diag(d).

H_blk is block-diagonal with orthonormal Sylvester-Hadamard blocks of size `block`, the largest power
of two that divides n; d are random signs. Used by the `hadamard` format (formats/hadamard.py) and
the `hadamard` method: a fast Walsh-Hadamard transform per block, O(n log block).
"""

from __future__ import annotations

import torch


def hadamard_block(n: int) -> int:
    """The largest power of two dividing n."""
    return n & (-n)


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform of each run of `block` entries along the last axis."""
    *lead, n = x.shape
    y = x.reshape(-1, n // block, block).clone()
    h = 1
    while h < block:
        y = y.reshape(y.shape[0], n // block, block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2).reshape(-1, n // block, block)
        h *= 2
    return (y / block ** 0.5).reshape(*lead, n)


def random_signs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=g) * -2 + 1


def rotate_weight(W: torch.Tensor, d: torch.Tensor, block: int) -> torch.Tensor:
    """W R^T = W diag(d) H_blk (H_blk symmetric): the weight seen by rotated inputs."""
    return fwht(W.float() * d, block)


def unrotate_weight(Wr: torch.Tensor, d: torch.Tensor, block: int) -> torch.Tensor:
    """W = W_r R = W_r H_blk diag(d)."""
    return fwht(Wr.float(), block) * d


def rotate_hessian(H: torch.Tensor, d: torch.Tensor, block: int) -> torch.Tensor:
    """R H R^T (the Hessian of the rotated inputs R x)."""
    M = H.float() * d[:, None] * d[None, :]
    return fwht(fwht(M, block).T.contiguous(), block).T.contiguous()
