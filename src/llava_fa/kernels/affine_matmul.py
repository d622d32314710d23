"""`x @ W.T` straight from the `affine` format's packed codes, in one Triton kernel.

The dense weight is never formed: each tile of W is unpacked from `qweight` (8 codes of `bits`
bits in `bits` bytes, see `quantizers.pack`), its float16 scales and packed zeros are read, and
`scale * (code - zero)` goes into a `tl.dot` with the activation tile. It is a memory mode: on an
H100 it is 5-20x faster than dequantizing per call but slower than cuBLAS on a cached dense float16
weight, even when decoding (the row-packed bytes are gathered, not streamed; see
`scripts/bench_kernels.py` and docs/RESULTS.md).

Triton is an optional import: on a machine without it (CI, CPU-only torch) `available()` is False
and `AffineLinear` falls back to its unfused paths. `TRITON_INTERPRET=1` runs the kernel on CPU
tensors (slowly), which is how the CPU tests check it when Triton is installed.
"""

from __future__ import annotations


import torch

from llava_fa.kernels.triton_support import as_rows, available, require_triton, tl, triton  # noqa: F401


if triton is not None:

    @triton.jit
    def _unpack(ptr, index, BITS: tl.constexpr, mask):
        """Codes at flat positions `index` of a stream packed 8 codes per `BITS` bytes."""
        bit = (index % 8) * BITS
        byte = (index // 8) * BITS + bit // 8
        shift = bit % 8
        lo = tl.load(ptr + byte, mask=mask, other=0).to(tl.int32)
        # a code crosses into the next byte only when it does not fit in this one's remaining bits
        hi = tl.load(ptr + byte + 1, mask=mask & (shift + BITS > 8), other=0).to(tl.int32)
        return ((lo | (hi << 8)) >> shift) & ((1 << BITS) - 1)

    @triton.jit
    def _affine_matmul_kernel(x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, out_ptr, M, N, K: tl.constexpr, n_groups,
                              group_size, stride_xm, stride_om, row_bytes, stride_qn, stride_qb, stride_sn, stride_sg,
                              BITS: tl.constexpr, SYM: tl.constexpr, TILE_IN_GROUP: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # K is a constexpr (one compile per in_features, a handful per model): Triton 3.6's interpreter
        # cannot loop over a runtime bound, and a fixed trip count lets the compiler unroll.
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K),
                        other=0.0)
            w_mask = (rk[:, None] < K) & (rn[None, :] < N)  # the tile of W.T: (BLOCK_K, BLOCK_N)
            # 8 codes sit in BITS consecutive bytes: gather each chunk's bytes into one word, then
            # shift the 8 codes out of it (k = 8 * chunk + position, the row-major order of the reshape)
            rc = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            c_mask = (rc[:, None] < row_bytes // BITS) & (rn[None, :] < N)
            if BITS <= 4:  # 8 codes fit in 32 bits; 64-bit integer ops are slow on GPUs
                word = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.int32)
            else:
                word = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.int64)
            for j in tl.static_range(BITS):
                # the stored row-major codes: stride_qb == 1 (other strides run too, see formats/affine.py)
                byte = tl.load(qweight_ptr + rn[None, :] * stride_qn + (rc[:, None] * BITS + j) * stride_qb,
                               mask=c_mask, other=0)
                word |= byte.to(word.dtype) << (8 * j)
            position = tl.arange(0, 8)
            codes = (word[:, None, :] >> (position[None, :, None] * BITS)) & ((1 << BITS) - 1)
            codes = tl.reshape(codes, (BLOCK_K, BLOCK_N)).to(tl.int32)
            if TILE_IN_GROUP:  # the whole K tile shares one group per row: one scale and zero per column
                group_n = rn * n_groups + k0 // group_size
                scale = tl.load(scales_ptr + rn * stride_sn + (k0 // group_size) * stride_sg, mask=rn < N,
                                other=0).to(tl.float16, bitcast=True)
                if SYM:
                    zero = 1 << (BITS - 1)
                else:
                    zero = _unpack(qzeros_ptr, group_n, BITS, rn < N)[None, :]
                w = scale.to(tl.float32)[None, :] * (codes - zero).to(tl.float32)
            else:
                group = rn[None, :] * n_groups + rk[:, None] // group_size
                scale = tl.load(scales_ptr + rn[None, :] * stride_sn + (rk[:, None] // group_size) * stride_sg,
                                mask=w_mask, other=0).to(tl.float16, bitcast=True)
                if SYM:
                    zero = 1 << (BITS - 1)
                else:
                    zero = _unpack(qzeros_ptr, group, BITS, w_mask)
                w = scale.to(tl.float32) * (codes - zero).to(tl.float32)
            acc += tl.dot(x, w.to(x.dtype))
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def default_blocks(m: int, group_size: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) by the number of tokens and the group size. tl.dot wants at
    least 16 rows, so a decode step (m = 1) pays for padding in compute, not in reads; narrow N
    tiles give it enough programs to fill the GPU. A K tile inside one group reads one scale and
    zero per output instead of one per weight. `scripts/bench_kernels.py` measures other tiles."""
    block_m, block_n, block_k = (16, 32, 128) if m <= 16 else (64, 64, 64)
    while block_k > 32 and group_size % block_k:
        block_k //= 2
    return block_m, block_n, block_k


def affine_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor | None,
                  bits: int, group_size: int, out_features: int,
                  blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """`x @ W.T` for an `affine` layer's stored tensors; x is (..., in_features)."""
    require_triton("fused affine")
    (lead, x2), k = as_rows(x), x.shape[-1]
    m, n = x2.shape[0], out_features
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    block_m, block_n, block_k = blocks or default_blocks(m, group_size)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _affine_matmul_kernel[grid](
        x2, qweight, scales, qweight if qzeros is None else qzeros, out, m, n, k, scales.shape[1], group_size,
        x2.stride(0), out.stride(0), qweight.shape[1], qweight.stride(0), qweight.stride(1), scales.stride(0),
        scales.stride(1),
        BITS=bits, SYM=qzeros is None, TILE_IN_GROUP=group_size % block_k == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return out.reshape(*lead, n)
