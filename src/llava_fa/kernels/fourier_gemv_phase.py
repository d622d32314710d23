"""Batch-1 `x @ W.T` of an `rfft` fourier layer through a per-call phase table (a second gemv, to measure
against `fourier_matmul`'s table of code pairs).

`fourier_matmul`'s gemv turns each code into (2 level cos theta, 2 level sin theta) by one lookup in a
table of 2^b pairs (256 B at 6 bits), then multiplies by the activation (Re X_k, Im X_k): per entry a
gather whose 32 lanes (32 output rows, one entry k) hit up to 8 sectors of that table, and two more
loads of X. ncu found that kernel bound by L1 (82% busy, DRAM 7%). Here the activation side is
turned into a table once per call instead:

    T[k, p] = cos(theta_p) Re X_{k+1} + sin(theta_p) Im X_{k+1}        (2^b_theta values per entry k)
    y_j     = sum_groups scale * sum_k L2[mag_jk] * T[k, phase_jk]     (L2 = 2 level: the Parseval weight)

so an entry costs two gathers within 4 * 2^b bytes each for a warp's lanes (the 2^b_theta values of
T at the lanes' common k; the 2^b_r levels): one 32-byte sector at 3 bits, two at 4. Then one product
and one add, with no float16 unpacking. T is K x 2^b_theta float32 (64 KiB for a 4096-wide input at 3 phase bits), written by a
small kernel and read from L1/L2. The K splits store partial sums that one more kernel adds in split
order, with the layer's epilogue (ODC rows, bias, cast): no zeroing kernel, no atomics, so the output
is the same every run. The codes, scales, edge columns and tiles are those of
`fourier_matmul`'s layout (formats/fourier_runtime.py); only rfft layers (real output) run here.
"""

from __future__ import annotations

import torch

from llava_fa.kernels.fourier_matmul import Blocks, default_blocks
from llava_fa.kernels.triton_support import require_triton, tl, triton

TABLE_BLOCK = 128  # entries per program of the table kernel
REDUCE_BLOCK = 256  # output rows per program of the split-K reduction


if triton is not None:
    from llava_fa.kernels.fourier_matmul import _code_words, _edge_terms  # Triton functions: only with Triton

    @triton.jit
    def _phase_table_kernel(spec_ptr, cs_ptr, table_ptr, K_REG, K_ALLOC, NPH: tl.constexpr, BLOCK: tl.constexpr):
        """T[k, p] for k < K_ALLOC (zero past K_REG: the padded entries of the code grid add nothing)."""
        rk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = rk < K_REG
        xr = tl.load(spec_ptr + 2 * (rk + 1), mask=live, other=0.0)
        xi = tl.load(spec_ptr + 2 * (rk + 1) + 1, mask=live, other=0.0)
        p = tl.arange(0, NPH)
        cos = tl.load(cs_ptr + 2 * p)
        sin = tl.load(cs_ptr + 2 * p + 1)
        t = xr[:, None] * cos[None, :] + xi[:, None] * sin[None, :]
        tl.store(table_ptr + rk[:, None] * NPH + p[None, :], t, mask=(rk < K_ALLOC)[:, None])

    @triton.jit
    def _gather(at, ASM_GATHER: tl.constexpr):
        """float32 values at `at`, in the layout of `at` (inline PTX on CUDA, see fourier_matmul's
        `_table_pairs`: tl.load of a gather changes the tile's layout; the interpreter runs tl.load)."""
        if ASM_GATHER:
            return tl.inline_asm_elementwise("ld.global.nc.f32 $0, [$1];", "=f,l", [at], dtype=tl.float32,
                                             is_pure=True, pack=1)
        return tl.load(at)

    @triton.jit
    def _phase_products(table_ptr, levels_ptr, scales_ptr, word, rw, rm, gstart, goff, M, K_REG,
                        GROUP: tl.constexpr, ALIGNED: tl.constexpr, MAG_BITS: tl.constexpr, BITS: tl.constexpr,
                        ENTRIES: tl.constexpr, NPH: tl.constexpr, ASM_GATHER: tl.constexpr):
        """sum over each word's codes of L2[mag] T[k, phase], per word and row (unscaled where aligned)."""
        part = tl.zeros(word.shape, dtype=tl.float32)
        for p in tl.static_range(ENTRIES):
            rk = rw * ENTRIES + p  # entry index of position p of each word
            code = ((word >> (p * BITS)) & ((1 << BITS) - 1)).to(tl.int32)
            level = _gather(levels_ptr + (code & ((1 << MAG_BITS) - 1)), ASM_GATHER)
            value = level * _gather(table_ptr + rk[:, None] * NPH + (code >> MAG_BITS), ASM_GATHER)
            if not ALIGNED:  # a group boundary may fall inside the tile: one scale per entry
                group = gstart[None, :] + (rk[:, None] + goff[None, :]) // GROUP
                sc = tl.load(scales_ptr + group, mask=(rk[:, None] < K_REG) & (rm[None, :] < M), other=0.0)
                value = value * sc.to(tl.float32)
            part += value
        return part

    @triton.jit
    def _gemv_phase_kernel(spec_ptr, table_ptr, codes_ptr, levels_ptr, scales_ptr, gstart_ptr, goff_ptr, edge_ptr,
                           out_ptr, M, K_REG: tl.constexpr, K_CHUNK: tl.constexpr, stride_c, edge0, edge1, N_WORDS,
                           GROUP: tl.constexpr, ALIGNED: tl.constexpr, MAG_BITS: tl.constexpr, BITS: tl.constexpr,
                           ENTRIES: tl.constexpr, WORD_BYTES: tl.constexpr, NPH: tl.constexpr, N_EDGE: tl.constexpr,
                           SPLIT_K: tl.constexpr, ASM_GATHER: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_K: tl.constexpr):
        # The tile stays in the layout its words load in, (words, rows), summed per thread over the K
        # loop and reduced once at the end, as in fourier_matmul's `_fourier_gemv_kernel`.
        BLOCK_W: tl.constexpr = BLOCK_K // ENTRIES
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        split = tl.program_id(1)
        acc = tl.zeros((BLOCK_W, BLOCK_M), dtype=tl.float32)
        gstart = tl.load(gstart_ptr + rm, mask=rm < M, other=0)
        goff = tl.load(goff_ptr + rm, mask=rm < M, other=0)
        for kk in range(0, K_CHUNK, BLOCK_K):
            k0 = split * K_CHUNK + kk
            rw = k0 // ENTRIES + tl.arange(0, BLOCK_W)
            word = _code_words(codes_ptr, rw, rm, M, N_WORDS, stride_c, WORD_BYTES)
            part = _phase_products(table_ptr, levels_ptr, scales_ptr, word, rw, rm, gstart, goff, M, K_REG, GROUP,
                                   ALIGNED, MAG_BITS, BITS, ENTRIES, NPH, ASM_GATHER)
            if ALIGNED:  # the tile lies in one group of every row: its scale multiplies the tile's sums
                sc = tl.load(scales_ptr + gstart + k0 // GROUP, mask=(rm < M) & (k0 < K_REG), other=0.0)
                part = part * sc.to(tl.float32)[None, :]
            acc += part
        total = tl.sum(acc, axis=0)
        if split == 0:
            rb = tl.arange(0, 1)
            zero = tl.zeros((1, BLOCK_M), dtype=tl.float32)
            with_edges, _ = _edge_terms(spec_ptr, edge_ptr, rb, rm, 1, M, 0, edge0, edge1, total[None, :], zero,
                                        N_EDGE, False)
            total = tl.reshape(with_edges, (BLOCK_M,))
        tl.store(out_ptr + split * M + rm, total, mask=rm < M)  # this split's partial sums, (SPLIT_K, M)

    @triton.jit
    def _reduce_kernel(part_ptr, rows_ptr, bias_ptr, out_ptr, M, SPLIT_K: tl.constexpr, HAS_ROWS: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        """y = (sum of the splits' partials, in split order) / rows + bias, in out_ptr's dtype: the zeroing,
        the atomics and the cast of fourier_matmul's split-K in one kernel, and the same sums every run."""
        rm = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = rm < M
        total = tl.load(part_ptr + rm, mask=live, other=0.0)
        for s in tl.static_range(1, SPLIT_K):
            total += tl.load(part_ptr + s * M + rm, mask=live, other=0.0)
        if HAS_ROWS:
            total = total / tl.load(rows_ptr + rm, mask=live, other=1.0)
        if HAS_BIAS:
            total += tl.load(bias_ptr + rm, mask=live, other=0.0).to(tl.float32)
        tl.store(out_ptr + rm, total.to(out_ptr.dtype.element_ty), mask=live)


def runs(spec: torch.Tensor, rt) -> bool:
    """One activation row of an rfft layer (real output): what this gemv computes."""
    return spec.shape[0] == 1 and not rt.complex_out


def fourier_gemv_phase(spec: torch.Tensor, rt, blocks: Blocks | None = None, *, dtype: torch.dtype = torch.float32,
                       rows: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Z (1, m) float32 from the activation spectrum `spec` (1, h) complex64 and the kernel layout `rt`
    (formats/fourier_runtime.KernelLayout), as `fourier_matmul` returns it for an rfft layer; or with the
    epilogue of an rfft layer without low-rank part, y = Z / rows + bias in `dtype`."""
    require_triton("fourier")
    if not runs(spec, rt):
        raise ValueError("fourier_gemv_phase takes one activation row of an rfft layer; use fourier_matmul")
    pairs = torch.view_as_real(spec.contiguous())
    m, n_words = rt.codes.shape[1], rt.codes.shape[0] // rt.word_bytes
    bl = blocks or default_blocks(1, m, rt.k_reg, rt.group, rt.aligned)
    chunk = -(-rt.k_reg // (bl.split_k * bl.k)) * bl.k
    k_alloc, nph = bl.split_k * chunk, rt.phase_cs.shape[0]
    table = torch.empty(k_alloc, nph, device=spec.device, dtype=torch.float32)
    _phase_table_kernel[(triton.cdiv(k_alloc, TABLE_BLOCK),)](pairs, rt.phase_cs, table, rt.k_reg, k_alloc,
                                                             NPH=nph, BLOCK=TABLE_BLOCK)
    partials = torch.empty((bl.split_k, m), device=spec.device, dtype=torch.float32)
    edges = list(rt.edge_cols) + [0, 0]
    _gemv_phase_kernel[(triton.cdiv(m, bl.m), bl.split_k)](
        pairs, table, rt.codes, rt.levels2, rt.scales, rt.group_start, rt.group_offset, rt.edges, partials, m, rt.k_reg,
        chunk, rt.codes.stride(0), edges[0], edges[1], n_words, GROUP=rt.group,
        ALIGNED=rt.aligned and rt.group % bl.k == 0, MAG_BITS=rt.mag_bits, BITS=rt.bits, ENTRIES=rt.entries,
        WORD_BYTES=rt.word_bytes, NPH=nph, N_EDGE=len(rt.edge_cols), SPLIT_K=bl.split_k, ASM_GATHER=spec.is_cuda,
        BLOCK_M=bl.m, BLOCK_K=bl.k, num_warps=bl.warps, num_stages=bl.stages)
    out = torch.empty((1, m), device=spec.device, dtype=dtype)
    _reduce_kernel[(triton.cdiv(m, REDUCE_BLOCK),)](partials, partials if rows is None else rows,
                                                     partials if bias is None else bias, out, m, SPLIT_K=bl.split_k,
                                                     HAS_ROWS=rows is not None, HAS_BIAS=bias is not None,
                                                     BLOCK=REDUCE_BLOCK)
    return out
