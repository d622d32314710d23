"""`x @ W.T` for a `fourier` layer (LLaVA-FA) from its PolarQuant codes, in one Triton kernel.

The weight is a half spectrum S along the input axis (transform `rfft`) or of the 2-D DFT
(`rfft2`). With X = rfft(x / c) (orthonormal) Parseval gives, per output row j,

    Z_j = sum_k w_k S[j,k] conj(X_k),   y = Re(Z) (rfft)   or   y = Re(ifft_m(Z)) (rfft2)

(w_k = 2 for the complex columns, which stand for their mirror too; see formats/fourier.py). A
stored complex entry is rho e^{i theta} with rho = level[mag] * scale[group] and theta =
-pi + 2 pi phase / 2^b_theta; one code of b_r + b_theta bits holds both. Each tile of codes is turned
into the two real tiles 2 level cos(theta) and 2 level sin(theta) (one table of pairs indexed by the
byte, see `_code_tiles`; the group scale multiplies the dot's result) and goes into `tl.dot` with
the activation spectrum: tensor cores for prefill and batches 2-16 (padded to 16 in registers, never
in memory); one activation row runs `_fourier_gemv_kernel` on the CUDA cores instead, in the layout
the code bytes load in. W and the dense spectrum are never formed.

Kernel layout (built once per device from the stored buffers by `formats/fourier_runtime.py`):
- `codes` uint8 (K_pad * bits / 8, m): entry k+1 of row j (the columns between DC and Nyquist) as the
  code `mag | phase << mag_bits` of b = b_r + b_theta bits, packed at that width along k: words of
  `entries` codes in `word_bytes` bytes (4 codes in 3 bytes at 6 bits, 8 in b bytes at odd b), byte t
  of word w at row w * word_bytes + t. So the codes take exactly their stored size. Output rows are
  the contiguous axis, as in gemlite's packing: a (K, M) tile is the B operand of tl.dot as loaded,
  and its loads coalesce (row-major (m, K) codes read through a transposed tile were uncoalesced:
  ncu, 2% of the DRAM bandwidth);
- `scales` float16 (n_groups,) (the stored group scales, shared, not copied) and, per row, the group of its first such entry and the rank offset
  of that entry within the row's stored complex entries (rfft2 stores complex DC entries in some
  rows, which shifts that row's groups by one);
- the few self-conjugate columns (DC, Nyquist: at most 2) as dense weighted complex values (m, E, 2),
  added in the epilogue.
Triton is optional: without it (CPU builds of torch) `available()` is False and the layer keeps
its other backends; `TRITON_INTERPRET=1` runs the kernel on CPU tensors for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.kernels.triton_support import available, require_triton, tl, triton  # noqa: F401


if triton is not None:

    @triton.jit
    def _code_words(codes_ptr, rw, rm, M, N_WORDS, stride_c, WORD_BYTES: tl.constexpr):
        """The packed words rw of rows rm, (len(rw), len(rm)): int32 up to 24 bits, else int64."""
        mask = (rw[:, None] < N_WORDS) & (rm[None, :] < M)
        at = codes_ptr + (rw[:, None] * WORD_BYTES) * stride_c + rm[None, :]
        if WORD_BYTES <= 3:
            word = tl.zeros((rw.shape[0], rm.shape[0]), dtype=tl.int32)
        else:
            word = tl.zeros((rw.shape[0], rm.shape[0]), dtype=tl.int64)
        for j in tl.static_range(WORD_BYTES):  # streamed once: keep L2 for the rest
            byte = tl.load(at + j * stride_c, mask=mask, other=0, eviction_policy="evict_first")
            word |= byte.to(word.dtype) << (8 * j)
        return word

    @triton.jit
    def _code_tiles(codes_ptr, tables_ptr, rm, k0, M, N_WORDS, stride_c, BITS: tl.constexpr,
                    ENTRIES: tl.constexpr, WORD_BYTES: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
        """The (BLOCK_K, BLOCK_M) tiles of 2 level cos(theta) and 2 level sin(theta) for entries k0.. of
        rows rm (the orientation of W^T that tl.dot takes: no transpose through shared memory).

        The codes come packed at their stored width, ENTRIES codes of BITS bits per word of WORD_BYTES
        bytes (byte j of word w of every row at codes row w * WORD_BYTES + j): the word's bytes are
        loaded as rows of the tile and the codes shifted out of it. One table of (2 level cos, 2 level
        sin) float16 pairs per code, 2^BITS pairs read as int32 words: one load per entry. (Three
        tables, levels, cos and sin, took three lookups plus the code's split and two products per
        entry: the kernel was bound by its instructions, about 40 per entry, not by its reads; cos/sin
        computed in registers lower to libdevice's precise sinf/cosf, about a hundred instructions.)"""
        rw = k0 // ENTRIES + tl.arange(0, BLOCK_K // ENTRIES)
        word = _code_words(codes_ptr, rw, rm, M, N_WORDS, stride_c, WORD_BYTES)
        if ENTRIES == 1:
            code = word.to(tl.int32)
        else:
            position = tl.arange(0, ENTRIES)
            code = (word[:, None, :] >> (position[None, :, None] * BITS)) & ((1 << BITS) - 1)
            code = tl.reshape(code, (BLOCK_K, BLOCK_M)).to(tl.int32)  # entry k = word * ENTRIES + position
        pair = tl.load(tables_ptr + code)  # int32: the two float16 values of the code, one load
        wc = (pair & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True)
        ws = (pair >> 16).to(tl.uint16).to(tl.float16, bitcast=True)
        return wc.to(tl.float32), ws.to(tl.float32)

    @triton.jit
    def _tile_scales(scales_ptr, gstart_ptr, goff_ptr, rm, rk, M, K_REG, k0,
                     GROUP: tl.constexpr, ALIGNED: tl.constexpr):
        """Group scales: (1, BLOCK_M) when the tile lies inside one group of every row, else per entry."""
        gstart = tl.load(gstart_ptr + rm, mask=rm < M, other=0)
        if ALIGNED:
            scale = tl.load(scales_ptr + gstart + k0 // GROUP, mask=(rm < M) & (k0 < K_REG), other=0.0)
            scale = scale.to(tl.float32)[None, :]
        else:
            goff = tl.load(goff_ptr + rm, mask=rm < M, other=0)
            group = gstart[None, :] + (rk[:, None] + goff[None, :]) // GROUP
            scale = tl.load(scales_ptr + group, mask=(rk[:, None] < K_REG) & (rm[None, :] < M), other=0.0).to(tl.float32)
        return scale

    @triton.jit
    def _edge_terms(spec_ptr, edge_ptr, rb, rm, B, M, stride_spec, edge0, edge1, acc_r, acc_i,
                    N_EDGE: tl.constexpr, COMPLEX_OUT: tl.constexpr):
        """The self-conjugate columns (dense weighted values per row) added to the accumulators."""
        for e in tl.static_range(N_EDGE):
            col = edge0 if e == 0 else edge1
            er = tl.load(spec_ptr + rb * stride_spec + 2 * col, mask=rb < B, other=0.0)[:, None]
            ei = tl.load(spec_ptr + rb * stride_spec + 2 * col + 1, mask=rb < B, other=0.0)[:, None]
            gr = tl.load(edge_ptr + rm * (2 * N_EDGE) + 2 * e, mask=rm < M, other=0.0)[None, :]
            gi = tl.load(edge_ptr + rm * (2 * N_EDGE) + 2 * e + 1, mask=rm < M, other=0.0)[None, :]
            acc_r += gr * er + gi * ei
            if COMPLEX_OUT:
                acc_i += gi * er - gr * ei
        return acc_r, acc_i

    @triton.jit
    def _fourier_matmul_kernel(spec_ptr, codes_ptr, tables_ptr, scales_ptr, gstart_ptr, goff_ptr, edge_ptr,
                               out_ptr, B, M, K_REG: tl.constexpr, K_CHUNK: tl.constexpr, stride_spec, stride_c,
                               stride_out, edge0, edge1,
                               N_WORDS, GROUP: tl.constexpr, ALIGNED: tl.constexpr, BITS: tl.constexpr,
                               ENTRIES: tl.constexpr, WORD_BYTES: tl.constexpr, N_EDGE: tl.constexpr,
                               COMPLEX_OUT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                               SPLIT_K: tl.constexpr,
                               BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        # spec: the activation spectrum as (re, im) float32 pairs, (B, h, 2) row-major; entry k of the
        # code grid is spectrum column k + 1. Program (i, j, s) takes rows block i, batch block j and
        # the s-th chunk of K_CHUNK entries (split-K: a decode step has too few row blocks to fill the
        # GPU and hide the latency of each tile's loads).
        rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        split = tl.program_id(2)
        acc_r = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
        acc_i = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
        for kk in range(0, K_CHUNK, BLOCK_K):  # a constant trip count: Triton's interpreter needs one
            k0 = split * K_CHUNK + kk
            rk = k0 + tl.arange(0, BLOCK_K)
            x_mask = (rb[:, None] < B) & (rk[None, :] < K_REG)
            x_at = spec_ptr + rb[:, None] * stride_spec + 2 * (rk[None, :] + 1)
            xr = tl.load(x_at, mask=x_mask, other=0.0).to(DOT_DTYPE)
            xi = tl.load(x_at + 1, mask=x_mask, other=0.0).to(DOT_DTYPE)
            wc, ws = _code_tiles(codes_ptr, tables_ptr, rm, k0, M, N_WORDS, stride_c, BITS, ENTRIES, WORD_BYTES,
                                  BLOCK_K, BLOCK_M)
            scale = _tile_scales(scales_ptr, gstart_ptr, goff_ptr, rm, rk, M, K_REG, k0, GROUP, ALIGNED)
            if ALIGNED:  # one scale per output row: applied to the dot's result, not to every entry
                wc = wc.to(DOT_DTYPE)
                ws = ws.to(DOT_DTYPE)
                acc_r += (tl.dot(xr, wc) + tl.dot(xi, ws)) * scale  # Re((a + ib)(xr - i xi)) = a xr + b xi
                if COMPLEX_OUT:
                    acc_i += (tl.dot(xr, ws) - tl.dot(xi, wc)) * scale
            else:
                wc = (wc * scale).to(DOT_DTYPE)
                ws = (ws * scale).to(DOT_DTYPE)
                acc_r += tl.dot(xr, wc) + tl.dot(xi, ws)
                if COMPLEX_OUT:
                    acc_i += tl.dot(xr, ws) - tl.dot(xi, wc)
        if split == 0:
            acc_r, acc_i = _edge_terms(spec_ptr, edge_ptr, rb, rm, B, M, stride_spec, edge0, edge1, acc_r, acc_i,
                                       N_EDGE, COMPLEX_OUT)
        out_mask = (rb[:, None] < B) & (rm[None, :] < M)
        out_at = out_ptr + rb[:, None] * stride_out + rm[None, :] * (2 if COMPLEX_OUT else 1)
        if SPLIT_K == 1:
            tl.store(out_at, acc_r, mask=out_mask)
            if COMPLEX_OUT:
                tl.store(out_at + 1, acc_i, mask=out_mask)
        else:
            tl.atomic_add(out_at, acc_r, mask=out_mask, sem="relaxed")
            if COMPLEX_OUT:
                tl.atomic_add(out_at + 1, acc_i, mask=out_mask, sem="relaxed")


    @triton.jit
    def _table_pairs(at, ASM_GATHER: tl.constexpr):
        """The table words at `at`, in the layout of `at`. tl.load of a gather gets a layout of its own
        (one entry per thread), and the codes' tile (8 rows per thread, as their bytes load) went through
        shared memory to reach it, as 64-bit pointers, for every code; an elementwise load in inline
        PTX keeps the codes' layout. Triton's interpreter (CPU tests) runs no PTX: tl.load there."""
        if ASM_GATHER:
            return tl.inline_asm_elementwise("ld.global.nc.b32 $0, [$1];", "=r,l", [at], dtype=tl.int32,
                                             is_pure=True, pack=1)
        return tl.load(at)

    @triton.jit
    def _word_products(spec_ptr, tables_ptr, scales_ptr, word, rw, rm, gstart, goff, M, K_REG, GROUP: tl.constexpr,
                       ALIGNED: tl.constexpr, BITS: tl.constexpr, ENTRIES: tl.constexpr, COMPLEX_OUT: tl.constexpr,
                       ASM_GATHER: tl.constexpr):
        """Re (and Im) of the products of a tile of words with the activation row, per word and row,
        summed over the word's codes: each code shifted out in place, its entry's activation loaded
        with stride ENTRIES (unscaled where the tile lies in one group: the caller scales the sums)."""
        part_r = tl.zeros(word.shape, dtype=tl.float32)
        part_i = tl.zeros(word.shape, dtype=tl.float32)
        for p in tl.static_range(ENTRIES):
            rk = rw * ENTRIES + p  # entry index of position p of each word
            xr = tl.load(spec_ptr + 2 * (rk + 1), mask=rk < K_REG, other=0.0)[:, None]
            xi = tl.load(spec_ptr + 2 * (rk + 1) + 1, mask=rk < K_REG, other=0.0)[:, None]
            code = ((word >> (p * BITS)) & ((1 << BITS) - 1)).to(tl.int32)
            pair = _table_pairs(tables_ptr + code, ASM_GATHER)  # int32: (2 level cos, 2 level sin) as float16
            wc = (pair & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
            ws = (pair >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
            if not ALIGNED:  # a group boundary may fall inside the tile: one scale per entry
                group = gstart[None, :] + (rk[:, None] + goff[None, :]) // GROUP
                sc = tl.load(scales_ptr + group, mask=(rk[:, None] < K_REG) & (rm[None, :] < M), other=0.0)
                wc = wc * sc.to(tl.float32)
                ws = ws * sc.to(tl.float32)
            part_r += wc * xr + ws * xi
            if COMPLEX_OUT:
                part_i += ws * xr - wc * xi
        return part_r, part_i

    @triton.jit
    def _fourier_gemv_kernel(spec_ptr, codes_ptr, tables_ptr, scales_ptr, gstart_ptr, goff_ptr, edge_ptr,
                             out_ptr, M, K_REG: tl.constexpr, K_CHUNK: tl.constexpr, stride_c, edge0, edge1,
                             N_WORDS, GROUP: tl.constexpr, ALIGNED: tl.constexpr, BITS: tl.constexpr,
                             ENTRIES: tl.constexpr, WORD_BYTES: tl.constexpr, N_EDGE: tl.constexpr,
                             COMPLEX_OUT: tl.constexpr, SPLIT_K: tl.constexpr, ASM_GATHER: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        # One activation row (decode at batch 1) on the CUDA cores. The tile stays in the layout its
        # words are loaded in, (words, rows): each code of a word is shifted out in place and its
        # entry's activation loaded with stride ENTRIES, and the products accumulate per thread
        # over the whole K loop; one reduction over the words axis at the end. (Reshaping the codes
        # to (entries, rows) and summing every tile put K across a warp's lanes: a layout change
        # through shared memory and five shuffles per value per tile; ncu: L1 82% busy, the bound.)
        BLOCK_W: tl.constexpr = BLOCK_K // ENTRIES
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        split = tl.program_id(1)
        acc_r = tl.zeros((BLOCK_W, BLOCK_M), dtype=tl.float32)
        acc_i = tl.zeros((BLOCK_W, BLOCK_M), dtype=tl.float32)
        gstart = tl.load(gstart_ptr + rm, mask=rm < M, other=0)
        goff = tl.load(goff_ptr + rm, mask=rm < M, other=0)
        for kk in range(0, K_CHUNK, BLOCK_K):
            k0 = split * K_CHUNK + kk
            rw = k0 // ENTRIES + tl.arange(0, BLOCK_W)
            word = _code_words(codes_ptr, rw, rm, M, N_WORDS, stride_c, WORD_BYTES)
            part_r, part_i = _word_products(spec_ptr, tables_ptr, scales_ptr, word, rw, rm, gstart, goff, M, K_REG,
                                            GROUP, ALIGNED, BITS, ENTRIES, COMPLEX_OUT, ASM_GATHER)
            if ALIGNED:  # the tile lies in one group of every row: its scale multiplies the tile's sums
                sc = tl.load(scales_ptr + gstart + k0 // GROUP, mask=(rm < M) & (k0 < K_REG), other=0.0)
                part_r = part_r * sc.to(tl.float32)[None, :]
                part_i = part_i * sc.to(tl.float32)[None, :]
            acc_r += part_r
            if COMPLEX_OUT:
                acc_i += part_i
        sum_r = tl.sum(acc_r, axis=0)
        sum_i = tl.sum(acc_i, axis=0)
        if split == 0:
            rb = tl.arange(0, 1)
            r2, i2 = _edge_terms(spec_ptr, edge_ptr, rb, rm, 1, M, 0, edge0, edge1, sum_r[None, :], sum_i[None, :],
                                 N_EDGE, COMPLEX_OUT)
            sum_r = tl.reshape(r2, (BLOCK_M,))
            sum_i = tl.reshape(i2, (BLOCK_M,))
        out_at = out_ptr + rm * (2 if COMPLEX_OUT else 1)
        if SPLIT_K == 1:
            tl.store(out_at, sum_r, mask=rm < M)
            if COMPLEX_OUT:
                tl.store(out_at + 1, sum_i, mask=rm < M)
        else:
            tl.atomic_add(out_at, sum_r, mask=rm < M, sem="relaxed")
            if COMPLEX_OUT:
                tl.atomic_add(out_at + 1, sum_i, mask=rm < M, sem="relaxed")


@dataclass(frozen=True)
class Blocks:
    """Tiles and launch shape: batch rows, output rows and entries per tile, K split, warps, stages."""

    b: int
    m: int
    k: int
    split_k: int = 1
    warps: int = 4
    stages: int = 3


def default_blocks(batch: int, m: int, k_reg: int, group: int, aligned: bool) -> Blocks:
    """One activation row: the row-sum kernel; up to 16: tl.dot with the batch padded to 16 in
    registers; more: prefill tiles. A K split gives a decode step enough programs to hide each tile's
    loads: about 1,024 at batch 1 (8 per SM of an H200), 528 at batch 16; an aligned K tile inside one
    group reads one scale per row instead of one per entry. Batch 1 on a tall weight (11008 rows) takes
    256 x 64 tiles: the H200 sweep (`scripts/bench_fourier_kernel.py --sweep`, docs/results/kernels_h200/
    d123f6d/fourier_gemv_sweep.txt) measured 49.0 us there, where 128 x 32 tiles split 8 ways were not
    among the five fastest; 4096 rows: 128 x 32 split 16-32 ways, 18.5-18.8 us. The tiles keep ptxas
    under 180 registers without spills for sm_90 (`scripts/kernel_static_stats.py`)."""
    if batch > 16:
        base = Blocks(64, 64, 32)
    else:
        if batch == 1:
            base, target = (Blocks(1, 256, 64) if m >= 8192 else Blocks(1, 128, 32)), 1024
        else:
            base, target = Blocks(16, 64, 32), 528
        programs, tiles, split = -(-m // base.m), -(-k_reg // base.k), 1
        while programs * split < target and split * 2 <= tiles:
            split *= 2
        base = Blocks(base.b, base.m, base.k, split)
    k = base.k
    while aligned and k > 16 and group % k:
        k //= 2
    return Blocks(base.b, base.m, k, base.split_k, base.warps, base.stages)


_DOT = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def fourier_matmul(spec: torch.Tensor, rt, dtype: torch.dtype, blocks: Blocks | None = None) -> torch.Tensor:
    """Z (B, m) float32, or (B, m, 2) (re, im) for rfft2, from the activation spectrum `spec`
    (B, h) complex64 and the kernel layout `rt` (formats/fourier_runtime.KernelLayout); `dtype`
    is the activation's (the tiles go into the dot in it; float32 stays float32)."""
    require_triton("fourier")
    pairs = torch.view_as_real(spec.contiguous())  # (B, h, 2)
    batch, m = spec.shape[0], rt.codes.shape[1]
    n_words = rt.codes.shape[0] // rt.word_bytes
    bl = blocks or default_blocks(batch, m, rt.k_reg, rt.group, rt.aligned)
    shape = (batch, m, 2) if rt.complex_out else (batch, m)
    # split-K partial sums are added atomically into zeros
    out = (torch.zeros if bl.split_k > 1 else torch.empty)(shape, device=spec.device, dtype=torch.float32)
    chunk = -(-rt.k_reg // (bl.split_k * bl.k)) * bl.k
    edges = list(rt.edge_cols) + [0, 0]
    consts = dict(GROUP=rt.group, ALIGNED=rt.aligned and rt.group % bl.k == 0, BITS=rt.bits, ENTRIES=rt.entries,
                  WORD_BYTES=rt.word_bytes, N_EDGE=len(rt.edge_cols), COMPLEX_OUT=rt.complex_out,
                  SPLIT_K=bl.split_k, BLOCK_M=bl.m, BLOCK_K=bl.k, num_warps=bl.warps, num_stages=bl.stages)
    if bl.b == 1 and batch == 1:
        _fourier_gemv_kernel[(triton.cdiv(m, bl.m), bl.split_k)](
            pairs, rt.codes, rt.tables, rt.scales, rt.group_start, rt.group_offset, rt.edges, out, m, rt.k_reg,
            chunk, rt.codes.stride(0), edges[0], edges[1], n_words, ASM_GATHER=spec.is_cuda, **consts)
        return out
    grid = (triton.cdiv(m, bl.m), triton.cdiv(batch, bl.b), bl.split_k)
    _fourier_matmul_kernel[grid](
        pairs, rt.codes, rt.tables, rt.scales, rt.group_start, rt.group_offset, rt.edges, out,
        batch, m, rt.k_reg, chunk, pairs.stride(0), rt.codes.stride(0), out.stride(0), edges[0], edges[1], n_words,
        DOT_DTYPE=getattr(tl, _DOT.get(dtype, "float32")), BLOCK_B=bl.b, **consts)
    return out
