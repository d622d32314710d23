"""Prefill of an `rfft` fourier layer as one dense GEMM: the codes decoded to the weighted spectrum once
per call, then cuBLAS on the tensor cores (from 17 tokens on, in place of `fourier_matmul`'s prefill tiles:
5.6-8.1x faster on the H200, docs/results/kernels_h200/b0deeeb/).

With X = rfft(x / c) (orthonormal), an rfft layer computes y_j = sum_k w_k Re(S[j,k] conj(X_k)) =
sum_k (w_k Re S[j,k]) Re X_k + (w_k Im S[j,k]) Im X_k (formats/fourier.py). So y = [Re X, Im X] @ D with
D = [w Re S; w Im S] (2 K_REG, m), a real matrix the size of the dense weight. `fourier_matmul`'s
prefill tiles decode every code tile again for each block of 64 tokens (on the H200, 565.8 us for
4096 x 4096 at 256 tokens, where a dense bf16 GEMM takes ~15 us). Here one kernel writes D in the
activation's dtype (each code through the same table of (2 level cos, 2 level sin) pairs, times its
group scale), and one GEMM does the rest: D costs a dense weight's memory for the duration of the
call, one layer at a time. The self-conjugate columns (DC, Nyquist) are added by a small product.
"""

from __future__ import annotations

import torch

from llava_fa.kernels.triton_support import require_triton, tl, triton

BLOCK_K, BLOCK_M = 32, 64  # entries x output rows per program of the decoding kernel


if triton is not None:
    from llava_fa.kernels.fourier_matmul import _code_tiles, _tile_scales  # Triton functions: only with Triton

    @triton.jit
    def _weighted_spectrum_kernel(codes_ptr, tables_ptr, scales_ptr, gstart_ptr, goff_ptr, out_ptr, M, K_REG,
                                  N_WORDS, stride_c, GROUP: tl.constexpr, BITS: tl.constexpr, ENTRIES: tl.constexpr,
                                  WORD_BYTES: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
        """D[k, j] = 2 level cos(theta) scale, D[K_REG + k, j] = 2 level sin(theta) scale of entry k of row j."""
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        k0 = tl.program_id(1) * BLOCK_K
        rk = k0 + tl.arange(0, BLOCK_K)
        wc, ws = _code_tiles(codes_ptr, tables_ptr, rm, k0, M, N_WORDS, stride_c, BITS, ENTRIES, WORD_BYTES,
                             BLOCK_K, BLOCK_M)
        scale = _tile_scales(scales_ptr, gstart_ptr, goff_ptr, rm, rk, M, K_REG, k0, GROUP, False)
        mask = (rk[:, None] < K_REG) & (rm[None, :] < M)
        at = out_ptr + rk[:, None] * M + rm[None, :]
        tl.store(at, (wc * scale).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(at + K_REG * M, (ws * scale).to(out_ptr.dtype.element_ty), mask=mask)


def runs(rt) -> bool:
    """rfft layers (real output) only; rfft2 keeps the tiles of fourier_matmul."""
    return not rt.complex_out


def weighted_spectrum(rt, dtype: torch.dtype) -> torch.Tensor:
    """D (2 K_REG, m) in `dtype` from the kernel layout `rt` (formats/fourier_runtime.KernelLayout)."""
    require_triton("fourier")
    m = rt.codes.shape[1]
    out = torch.empty(2 * rt.k_reg, m, device=rt.codes.device, dtype=dtype)
    _weighted_spectrum_kernel[(triton.cdiv(m, BLOCK_M), triton.cdiv(rt.k_reg, BLOCK_K))](
        rt.codes, rt.tables, rt.scales, rt.group_start, rt.group_offset, out, m, rt.k_reg,
        rt.codes.shape[0] // rt.word_bytes, rt.codes.stride(0), GROUP=rt.group, BITS=rt.bits, ENTRIES=rt.entries,
        WORD_BYTES=rt.word_bytes, BLOCK_K=BLOCK_K, BLOCK_M=BLOCK_M)
    return out


def fourier_dense_matmul(spec: torch.Tensor, rt, dtype: torch.dtype) -> torch.Tensor:
    """Z (B, m) float32 for an rfft layer, as `fourier_matmul` returns it: one GEMM in `dtype` on the
    decoded spectrum (float32 accumulation), the self-conjugate columns added in float32."""
    if not runs(rt):
        raise ValueError("fourier_dense_matmul takes rfft layers; rfft2 runs fourier_matmul")
    pairs = torch.view_as_real(spec)  # (B, h, 2)
    regular = pairs[:, 1:1 + rt.k_reg]  # entry k of the code grid is spectrum column k + 1
    x = torch.cat([regular[..., 0], regular[..., 1]], dim=1).to(dtype)  # [Re X, Im X], (B, 2 K_REG)
    z = (x @ weighted_spectrum(rt, dtype)).float()
    for e, col in enumerate(rt.edge_cols):  # dense weighted values of the DC / Nyquist columns
        z += pairs[:, col, 0:1] * rt.edges[:, e, 0][None, :] + pairs[:, col, 1:2] * rt.edges[:, e, 1][None, :]
    return z
