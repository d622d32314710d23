"""One GPTQ block of columns (affine grid, error feedback inside the block) in one Triton kernel.

For a block W1 (out, width) of the weight, as the earlier blocks' feedback left it, and its block
U1 (width, width) of U (the upper Cholesky factor of H^-1), the kernel computes for i = 0 .. width-1,
exactly what quantizers/feedback.py's column loop computes with gptq's `AffineColumns`:

    at a group start inside the block: scale, zero = fit(the group's current columns)
    codes[:, i] = clamp(round(W1[:, i] / scale) + zero, 0, maxq)
    Q[:, i]     = scale * (codes[:, i] - zero)
    err[:, i]   = (W1[:, i] - Q[:, i]) / U1[i, i]
    W1[:, i:]  -= err[:, i, None] * U1[i, i:]

and returns err (out, width), which the loop pushes onto the columns past the block. Every step is
local to one row of W (the group fit too: min/max over the row's group columns), so each program
holds BLOCK_R rows of the block in registers and runs all `width` steps on them: one launch per
block instead of ~12 small torch ops per column, which left GPTQ launch-bound on a GPU.

Groups: either every group that starts in the block also ends in it (group size dividing the block
size; the fits happen in the kernel, on the tile as the feedback left it), or no group starts after
the block's first column (group size a multiple of the block size, one group per row): the group in
force was fitted before the launch, on the torch side (`kernel_groups` says which; anything else,
and act-order, keeps the column loop).

Same results as the loop: the same float32 operations in the same order. Three details keep it so:
- divisions use `div_rn` (Triton's `/` on fp32 lowers to the approximate div.full.f32) and the launch
  sets enable_fp_fusion=False (a fused multiply-add would round `w - e * u` once instead of twice);
- rounding is half to even like torch.round, built from floor (libdevice's rint does not run in the
  interpreter, which the CPU tests use);
- torch on CUDA divides by a Python number as a multiplication by its float32 reciprocal (ATen's
  div_true_kernel_cuda; on CPU it divides), so fit's `(hi - lo) / maxq` does the same per device.

To time on a GPU (scripts/bench_gptq_block.py): seconds per module of gptq_quantize, loop against
kernel, on 4096x4096, 11008x4096 and 4096x11008, and BLOCK_ROWS / NUM_WARPS around 16 / 4. Each
step is a dependent chain (a row reduction for the column, one row of U1 from L1/L2, the update of
the tile), so a block costs ~width steps of latency whatever the row count; 16 rows x 128 columns of
float32 is 8 KB of registers per tile, and the program keeps four (the block, Q, errors, codes).
"""

from __future__ import annotations

import contextlib

import torch

from llava_fa.kernels.triton_support import available, tl, triton

BLOCK_ROWS = 16  # rows per program: 4096 rows give 256 programs, enough to fill an H200's 132 SMs
NUM_WARPS = 4  # 128 threads over a 16 x 128 tile: 16 values of each tile per thread
MAX_WIDTH = 256  # a wider block no longer fits in registers (the column loop runs)


if triton is not None:

    @triton.jit
    def _round_half_even(x):
        """torch.round: to the nearest integer, ties to even (floor, the fraction and parity are exact)."""
        f = tl.floor(x)
        d = x - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
        return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)

    @triton.jit
    def _f16_up(x):
        """quantizers.float16.f16_up: clamp to [f16 tiny, f16 max], round up to a float16 value."""
        x = tl.minimum(tl.maximum(x, 6.103515625e-05), 65504.0)
        h = x.to(tl.float16)  # round to nearest even, as torch's .half()
        # the next float16 above a positive one is the next bit pattern (never past max: x <= max)
        up = (h.to(tl.int16, bitcast=True) + 1).to(tl.int16).to(tl.float16, bitcast=True)
        hf = h.to(tl.float32)
        return tl.where(hf < x, up.to(tl.float32), hf)

    @triton.jit
    def _fit(tile, in_group, inv_maxq, MAXQ: tl.constexpr, SYM: tl.constexpr, RECIP: tl.constexpr):
        """quantizers.affine.fit over the columns `in_group` of each row of `tile`."""
        lo = tl.minimum(tl.min(tl.where(in_group, tile, float("inf")), axis=1), 0.0)
        hi = tl.maximum(tl.max(tl.where(in_group, tile, float("-inf")), axis=1), 0.0)
        if SYM:
            hi = tl.maximum(-lo, hi)
            hi = tl.where(hi == 0.0, 1.0, hi)
            lo = -hi
        else:
            hi = tl.where(hi == lo, 1.0, hi)  # an all-zero group: a unit range
        if RECIP:
            scale = _f16_up((hi - lo) * inv_maxq)
        else:
            scale = _f16_up(tl.math.div_rn(hi - lo, tl.full(hi.shape, MAXQ, tl.float32)))
        if SYM:
            zero = tl.full(scale.shape, (MAXQ + 1) // 2, tl.float32)
        else:
            zero = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(-lo, scale)), 0.0), MAXQ * 1.0)
        return scale, zero

    @triton.jit
    def _gptq_block_kernel(w_ptr, u_ptr, scale_ptr, zero_ptr, codes_ptr, q_ptr, err_ptr, rows, group0, inv_maxq,
                           stride_w, stride_u0, stride_u1, stride_s, stride_c, stride_q, stride_e,
                           WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
                           MAXQ: tl.constexpr, SYM: tl.constexpr, RECIP: tl.constexpr):
        # WIDTH is a constexpr (two compiles per shape: full and last block): Triton 3.6's interpreter
        # cannot loop over a runtime bound.
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        rmask = r < rows
        cmask = c < WIDTH
        mask = rmask[:, None] & cmask[None, :]
        tile = tl.load(w_ptr + r[:, None] * stride_w + c[None, :], mask=mask, other=0.0)
        if GROUP == 0:  # the group in force was fitted before the launch
            s = tl.load(scale_ptr + r * stride_s + group0, mask=rmask, other=1.0)
            z = tl.load(zero_ptr + r * stride_s + group0, mask=rmask, other=0.0)
        else:  # the first fit is at i = 0
            s = tl.full((BLOCK_R,), 1.0, tl.float32)
            z = tl.zeros((BLOCK_R,), dtype=tl.float32)
        # results gathered in registers and stored once, row-contiguous (a column store per step is
        # strided by a whole row)
        qs = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        es = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        cs = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
        for i in range(0, WIDTH):
            if GROUP != 0:
                if i % GROUP == 0:
                    s, z = _fit(tile, ((c >= i) & (c < i + GROUP) & cmask)[None, :], inv_maxq, MAXQ, SYM, RECIP)
                    tl.store(scale_ptr + r * stride_s + group0 + i // GROUP, s, mask=rmask)
                    tl.store(zero_ptr + r * stride_s + group0 + i // GROUP, z, mask=rmask)
            at = c[None, :] == i
            w = tl.sum(tl.where(at, tile, 0.0), axis=1)  # column i: one term per row, exact
            code = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(w, s)) + z, 0.0), MAXQ * 1.0)
            q = s * (code - z)
            u = tl.load(u_ptr + i * stride_u0 + c * stride_u1, mask=cmask & (c >= i), other=0.0)
            e = tl.math.div_rn(w - q, tl.sum(tl.where(c == i, u, 0.0), axis=0))
            tile = tl.where(c[None, :] >= i, tile - e[:, None] * u[None, :], tile)
            qs = tl.where(at, q[:, None], qs)
            es = tl.where(at, e[:, None], es)
            cs = tl.where(at, code.to(tl.int32)[:, None], cs)
        tl.store(q_ptr + r[:, None] * stride_q + c[None, :], qs, mask=mask)
        tl.store(err_ptr + r[:, None] * stride_e + c[None, :], es, mask=mask)
        tl.store(codes_ptr + r[:, None] * stride_c + c[None, :], cs.to(tl.int64), mask=mask)


def kernel_groups(start: int, width: int, n: int, group_size: int | None) -> int | None:
    """How the kernel meets the groups of the block of `width` columns at loop position `start` (of n).

    group_size: every group starting in the block starts at a multiple of group_size from `start`
    and ends in the block, so the kernel fits them all. 0: no group starts after the block's first
    column; the group in force (fitted at `start` or earlier) is fitted before the launch. None:
    neither (a group starting inside the block reaches past it; act-order), the column loop runs.
    """
    if not group_size or group_size < 1:
        return None
    if (start // group_size + 1) * group_size >= start + width:
        return 0
    if start % group_size == 0 and (width % group_size == 0 or start + width == n):
        return group_size
    return None


def can_run(W1: torch.Tensor, U1: torch.Tensor) -> bool:
    """Whether the kernel runs on this block: Triton on its device, real float32, a width it holds."""
    return (available(W1) and W1.dtype == U1.dtype == torch.float32 and W1.device == U1.device
            and 0 < W1.shape[1] <= MAX_WIDTH and W1.stride(1) == 1)


def divides_by_reciprocal(x: torch.Tensor) -> bool:
    """Whether torch divides `x` by a Python number as a multiplication by its float32 reciprocal
    (CUDA's div_true_kernel does, the CPU kernel divides): fit's `(hi - lo) / maxq` must match."""
    return x.is_cuda


def affine_block(W1: torch.Tensor, U1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, codes: torch.Tensor,
                 Q: torch.Tensor, *, group: int, group0: int, bits: int, sym: bool) -> torch.Tensor:
    """Round the block W1 (out, width) in one launch; returns its errors (out, width) divided by U_jj.

    W1 is read, not changed. U1 (width, width): the block's part of U. codes (int64) and Q: (out,
    width) views at the block's columns, written. scale, zero (out, groups): `group` > 0 fits a group
    at every multiple of it (group index group0 + i // group) and writes them; 0 reads group0's.
    """
    rows, width = W1.shape
    errors = torch.empty_like(W1)
    maxq = (1 << bits) - 1
    inv_maxq = float(torch.tensor(1.0) / maxq)  # the float32 reciprocal torch uses on CUDA
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    # Triton launches on the current device, which need not be W1's (one process, several GPUs)
    with torch.cuda.device(W1.device) if W1.is_cuda else contextlib.nullcontext():
        _gptq_block_kernel[grid](
            W1, U1, scale, zero, codes, Q, errors, rows, group0, inv_maxq,
            W1.stride(0), U1.stride(0), U1.stride(1), scale.stride(0), codes.stride(0), Q.stride(0), errors.stride(0),
            WIDTH=width, BLOCK_C=triton.next_power_of_2(width), BLOCK_R=BLOCK_ROWS, GROUP=group, MAXQ=maxq, SYM=sym,
            RECIP=divides_by_reciprocal(W1), num_warps=NUM_WARPS, enable_fp_fusion=False)
    return errors
