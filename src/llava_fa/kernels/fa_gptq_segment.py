"""One complex segment of fa-gptq's input-axis loop (PolarQuant pairs, error feedback) in one Triton kernel.

For a segment of g complex pairs (one PolarQuant group of every row: 2g real columns C1, Re and Im
interleaved, as the earlier segments' feedback left them), U1 = U's (2g, 2g) block over it, the row
scales s (fitted on the torch side before the launch) and the magnitude levels, the kernel computes
for each pair p = 0 .. g-1, exactly what methods/fa_gptq/input_axis.py's `pair_steps` computes:

    (x, y)     = C1[:, 2p], C1[:, 2p+1]
    phase      = the direction (cos_t, sin_t) of largest x cos_t + y sin_t (first in table order)
    along      = max(that projection, 0)
    mag        = #{midpoints between levels < clamp(along / s, 0, 1)}     (bucketize)
    Q          = levels[mag] * s * (cos_t, sin_t)
    e0         = (x - Q_re) / u00,  e1 = ((y - Q_im) - e0 u01) / u11       (E = D U_BB^-1, 2x2)
    C1[:, later pairs] -= e0 U1[2p, later] + e1 U1[2p+1, later]

and writes the magnitude and phase codes, Q and the errors E (rows, 2g), which the loop pushes onto
the columns past the segment with one matmul. Every step is local to one row, so each program holds
BLOCK_ROWS rows of the segment in registers (Re and Im as two (rows, pairs) tiles) and runs all g
steps on them: one launch per segment instead of ~57 small torch ops per pair, which left the loop
launch-bound on a GPU (the real DC/Nyquist segment, a few columns, stays in torch).

Same codes as the loop: the same float32 operations in the same order (gptq_block.py's rules):
divisions by `div_rn` (Triton's `/` is approximate), enable_fp_fusion=False (a fused multiply-add
rounds `a b + c d` once instead of twice). What Triton cannot repeat bit for bit the loop avoids:
no atan2 (the phase is a search over a table of directions, an exact comparison), no cos/sin (the
table is torch's, passed in), no BLAS (the solve and the update are spelled out in the loop). So
the nearest level needs no rounding function either: it counts midpoints, as bucketize does.

To time on a GPU: scripts/bench_fa_gptq_segment.py (seconds per module, loop against kernel).
"""

from __future__ import annotations

import contextlib

import torch

from llava_fa.kernels.triton_support import available, tl, triton

BLOCK_ROWS = 16  # rows per program: 4096 rows give 256 programs, enough to fill an H200's 132 SMs
NUM_WARPS = 4  # 128 threads over two 16 x 64 tiles (the default group of 64 pairs)
MAX_PAIRS = 128  # eight (rows, pairs) tiles in registers; wider groups keep the torch loop


if triton is not None:

    @triton.jit
    def _nearest_phase(x, y, cos_ptr, sin_ptr, NPH: tl.constexpr):
        """(table index, projection, cos, sin) of the direction of largest x cos + y sin, the first on a tie."""
        best = tl.full(x.shape, float("-inf"), tl.float32)
        t_best = tl.zeros(x.shape, dtype=tl.int32)
        cs = tl.zeros(x.shape, dtype=tl.float32)
        sn = tl.zeros(x.shape, dtype=tl.float32)
        for t in range(0, NPH):
            c = tl.load(cos_ptr + t)
            s = tl.load(sin_ptr + t)
            proj = x * c + y * s  # two products and a sum, each rounded (no fusion): the loop's ops
            better = proj > best  # strict: an equal later direction does not replace the first
            best = tl.where(better, proj, best)
            t_best = tl.where(better, t, t_best)
            cs = tl.where(better, c, cs)
            sn = tl.where(better, s, sn)
        return t_best, tl.maximum(best, 0.0), cs, sn

    @triton.jit
    def _nearest_level(u, bound_ptr, level_ptr, NLEV: tl.constexpr):
        """(index, value) of the nearest level: the count of midpoints below u (torch.bucketize, right=False)."""
        mag = tl.zeros(u.shape, dtype=tl.int32)
        for k in range(0, NLEV - 1):
            mag += (u > tl.load(bound_ptr + k)).to(tl.int32)
        return mag, tl.load(level_ptr + mag)

    @triton.jit
    def _store_pairs(ptr, r, p, stride, re, im, mask):
        """Store (rows, pairs) tiles of Re and Im interleaved into the rows r of a (rows, 2 pairs) matrix."""
        at = r[:, None] * stride + 2 * p[None, :]
        tl.store(ptr + at, re, mask=mask)
        tl.store(ptr + at + 1, im, mask=mask)

    @triton.jit
    def _pair_segment_kernel(c_ptr, u_ptr, scale_ptr, cos_ptr, sin_ptr, bound_ptr, level_ptr,
                             mag_ptr, phase_ptr, q_ptr, err_ptr, rows,
                             stride_c, stride_u0, stride_u1, stride_m, stride_p, stride_q, stride_e,
                             PAIRS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
                             NPH: tl.constexpr, NLEV: tl.constexpr):
        # PAIRS is a constexpr (two compiles per layer: full and last group): Triton 3.6's interpreter
        # cannot loop over a runtime bound.
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        p = tl.arange(0, BLOCK_P)
        rmask = r < rows
        pmask = p < PAIRS
        mask = rmask[:, None] & pmask[None, :]
        at_re = r[:, None] * stride_c + 2 * p[None, :]
        t_re = tl.load(c_ptr + at_re, mask=mask, other=0.0)
        t_im = tl.load(c_ptr + at_re + 1, mask=mask, other=0.0)
        scale = tl.load(scale_ptr + r, mask=rmask, other=1.0)
        # results gathered in registers and stored once per tile (a column store per step is strided
        # by a whole row)
        q_re = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        q_im = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        e_re = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        e_im = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        mags = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.int32)
        phases = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.int32)
        for i in range(0, PAIRS):
            at = p[None, :] == i
            x = tl.sum(tl.where(at, t_re, 0.0), axis=1)  # pair i: one term per row, exact
            y = tl.sum(tl.where(at, t_im, 0.0), axis=1)
            t, along, cs, sn = _nearest_phase(x, y, cos_ptr, sin_ptr, NPH)
            mag, level = _nearest_level(tl.minimum(tl.maximum(tl.math.div_rn(along, scale), 0.0), 1.0),
                                        bound_ptr, level_ptr, NLEV)
            rho = level * scale
            vx = rho * cs
            vy = rho * sn
            # U's rows 2i and 2i+1: the 2x2 diagonal block and the later pairs' columns
            row0 = u_ptr + (2 * i) * stride_u0
            row1 = row0 + stride_u0
            e0 = tl.math.div_rn(x - vx, tl.load(row0 + (2 * i) * stride_u1))
            e1 = tl.math.div_rn((y - vy) - e0 * tl.load(row0 + (2 * i + 1) * stride_u1),
                                tl.load(row1 + (2 * i + 1) * stride_u1))
            later = pmask & (p > i)
            at_u = (2 * p) * stride_u1
            u0_re = tl.load(row0 + at_u, mask=later, other=0.0)
            u0_im = tl.load(row0 + at_u + stride_u1, mask=later, other=0.0)
            u1_re = tl.load(row1 + at_u, mask=later, other=0.0)
            u1_im = tl.load(row1 + at_u + stride_u1, mask=later, other=0.0)
            upd = later[None, :]
            t_re = tl.where(upd, t_re - (e0[:, None] * u0_re[None, :] + e1[:, None] * u1_re[None, :]), t_re)
            t_im = tl.where(upd, t_im - (e0[:, None] * u0_im[None, :] + e1[:, None] * u1_im[None, :]), t_im)
            q_re = tl.where(at, vx[:, None], q_re)
            q_im = tl.where(at, vy[:, None], q_im)
            e_re = tl.where(at, e0[:, None], e_re)
            e_im = tl.where(at, e1[:, None], e_im)
            mags = tl.where(at, mag[:, None], mags)
            phases = tl.where(at, ((t + NPH // 2) % NPH)[:, None], phases)  # table order starts at code NPH/2
        tl.store(mag_ptr + r[:, None] * stride_m + p[None, :], mags.to(tl.int64), mask=mask)
        tl.store(phase_ptr + r[:, None] * stride_p + p[None, :], phases.to(tl.int64), mask=mask)
        _store_pairs(q_ptr, r, p, stride_q, q_re, q_im, mask)
        _store_pairs(err_ptr, r, p, stride_e, e_re, e_im, mask)


def can_run(C: torch.Tensor, U: torch.Tensor, width: int) -> bool:
    """Whether the kernel runs a segment of `width` real columns of C: Triton on C's device, float32
    C (unit column stride) and U on one device, a group that fits in registers."""
    return (available(C) and C.dtype == U.dtype == torch.float32 and C.device == U.device
            and 0 < width <= 2 * MAX_PAIRS and width % 2 == 0 and C.stride(1) == 1)


def pair_segment(C1: torch.Tensor, U1: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor,
                 bounds: torch.Tensor, directions: tuple[torch.Tensor, torch.Tensor], mag: torch.Tensor,
                 phase: torch.Tensor, Q1: torch.Tensor) -> torch.Tensor:
    """Round the segment C1 (rows, 2g; read, not changed) in one launch; returns its errors (rows, 2g).

    U1 (2g, 2g): U's block over the segment. scale (rows,): the row scales of its group. levels: the
    sorted magnitude levels, bounds their midpoints. directions: (cos, sin) of the phase levels in
    input_axis.direction_table's order (table index t is phase code (t + 2^(b-1)) mod 2^b). mag,
    phase (int64, rows x g) and Q1 (rows, 2g): views at the segment's columns, written."""
    rows, width = C1.shape
    pairs = width // 2
    cos, sin = directions
    errors = torch.empty_like(C1)
    # U is the transpose of a lower factor (column-major): each step reads two of its rows, so the
    # block is copied row-major once (2g x 2g, one small op) rather than read with a stride of n
    U1 = U1.contiguous()
    grid = (triton.cdiv(rows, BLOCK_ROWS),)
    # Triton launches on the current device, which need not be C1's (one process, several GPUs)
    with torch.cuda.device(C1.device) if C1.is_cuda else contextlib.nullcontext():
        _pair_segment_kernel[grid](
            C1, U1, scale.contiguous(), cos, sin, bounds, levels, mag, phase, Q1, errors, rows,
            C1.stride(0), U1.stride(0), U1.stride(1), mag.stride(0), phase.stride(0), Q1.stride(0), errors.stride(0),
            PAIRS=pairs, BLOCK_P=triton.next_power_of_2(pairs), BLOCK_R=BLOCK_ROWS, NPH=cos.numel(),
            NLEV=levels.numel(), num_warps=NUM_WARPS, enable_fp_fusion=False)
    return errors
