"""`x @ W.T` for a `fourier` layer (LLaVA-FA) from its PolarQuant codes, in one Triton kernel.

The weight is a half spectrum S along the input axis (transform `rfft`) or of the 2-D DFT
(`rfft2`). With X = rfft(x / c) (orthonormal) Parseval gives, per output row j,

    Z_j = sum_k w_k S[j,k] conj(X_k),   y = Re(Z) (rfft)   or   y = Re(ifft_m(Z)) (rfft2)

(w_k = 2 for the complex columns, which stand for their mirror too; see formats/fourier.py). A
stored complex entry is rho e^{i theta} with rho = level[mag] * scale[group] and theta from the
phase code, so the product needs no trigonometry at run time: one byte per entry holds both codes,
and two 2^(b_r + b_theta)-entry tables give 2 level cos(theta) and 2 level sin(theta). Each tile
of codes is turned into those two real tiles (times the group scale) and goes into `tl.dot` with
the activation spectrum: tensor cores for prefill, and the same reads at decode (batch padded to
16 in registers, never in memory). W and the dense spectrum are never formed.

Kernel layout (built once per device from the stored buffers by `formats/fourier_runtime.py`):
- `codes` uint8 (m, K_pad): entry k+1 of row j (the columns between DC and Nyquist) at [j, k],
  `mag | phase << mag_bits`; one byte per complex entry, i.e. 4 bits per weight;
- `scales` float32 (n_groups,) and, per row, the group of its first such entry and the rank offset
  of that entry within the row's stored complex entries (rfft2 stores complex DC entries in some
  rows, which shifts that row's groups by one);
- the few self-conjugate columns (DC, Nyquist: at most 2) as dense weighted complex values (m, E, 2),
  added in the epilogue.
Triton is optional: without it (CPU builds of torch) `available()` is False and the layer keeps
its other backends; `TRITON_INTERPRET=1` runs the kernel on CPU tensors for the tests.
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch, not with the CPU build
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None


def available(x: torch.Tensor) -> bool:
    """Whether the kernel can run on `x`'s device."""
    if triton is None:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _code_tiles(codes_ptr, lut_ptr, scales_ptr, gstart_ptr, goff_ptr, rm, rk, M, K_REG, k0, stride_c,
                    GROUP: tl.constexpr, ALIGNED: tl.constexpr, NCODES: tl.constexpr):
        """The (BLOCK_M, BLOCK_K) tiles of 2 rho cos(theta) and 2 rho sin(theta) for rows rm, entries rk."""
        mask = (rm[:, None] < M) & (rk[None, :] < K_REG)
        code = tl.load(codes_ptr + rm[:, None] * stride_c + rk[None, :], mask=mask, other=0).to(tl.int32)
        wc = tl.load(lut_ptr + code)
        ws = tl.load(lut_ptr + NCODES + code)
        gstart = tl.load(gstart_ptr + rm, mask=rm < M, other=0)
        if ALIGNED:  # every row's groups start at entry 0 and the tile lies inside one group
            scale = tl.load(scales_ptr + gstart + k0 // GROUP, mask=rm < M, other=0.0)[:, None]
        else:
            goff = tl.load(goff_ptr + rm, mask=rm < M, other=0)
            group = gstart[:, None] + (rk[None, :] + goff[:, None]) // GROUP
            scale = tl.load(scales_ptr + group, mask=mask, other=0.0)
        return wc * scale, ws * scale

    @triton.jit
    def _fourier_matmul_kernel(spec_ptr, codes_ptr, lut_ptr, scales_ptr, gstart_ptr, goff_ptr, edge_ptr,
                               out_ptr, B, M, K_REG: tl.constexpr, stride_spec, stride_c, stride_out,
                               edge0, edge1,
                               GROUP: tl.constexpr, ALIGNED: tl.constexpr, NCODES: tl.constexpr,
                               N_EDGE: tl.constexpr, COMPLEX_OUT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                               BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        # spec: the activation spectrum as (re, im) float32 pairs, (B, h, 2) row-major; entry k of the
        # code grid is spectrum column k + 1.
        rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        acc_r = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
        acc_i = tl.zeros((BLOCK_B, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, K_REG, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            x_mask = (rb[:, None] < B) & (rk[None, :] < K_REG)
            x_at = spec_ptr + rb[:, None] * stride_spec + 2 * (rk[None, :] + 1)
            xr = tl.load(x_at, mask=x_mask, other=0.0).to(DOT_DTYPE)
            xi = tl.load(x_at + 1, mask=x_mask, other=0.0).to(DOT_DTYPE)
            wc, ws = _code_tiles(codes_ptr, lut_ptr, scales_ptr, gstart_ptr, goff_ptr, rm, rk, M, K_REG, k0,
                                 stride_c, GROUP, ALIGNED, NCODES)
            wc = tl.trans(wc.to(DOT_DTYPE))
            ws = tl.trans(ws.to(DOT_DTYPE))
            acc_r += tl.dot(xr, wc) + tl.dot(xi, ws)  # Re((a + ib)(xr - i xi)) = a xr + b xi
            if COMPLEX_OUT:
                acc_i += tl.dot(xr, ws) - tl.dot(xi, wc)
        for e in tl.static_range(N_EDGE):  # self-conjugate columns: dense weighted values per row
            col = edge0 if e == 0 else edge1
            er = tl.load(spec_ptr + rb * stride_spec + 2 * col, mask=rb < B, other=0.0)[:, None]
            ei = tl.load(spec_ptr + rb * stride_spec + 2 * col + 1, mask=rb < B, other=0.0)[:, None]
            gr = tl.load(edge_ptr + rm * (2 * N_EDGE) + 2 * e, mask=rm < M, other=0.0)[None, :]
            gi = tl.load(edge_ptr + rm * (2 * N_EDGE) + 2 * e + 1, mask=rm < M, other=0.0)[None, :]
            acc_r += gr * er + gi * ei
            if COMPLEX_OUT:
                acc_i += gi * er - gr * ei
        out_mask = (rb[:, None] < B) & (rm[None, :] < M)
        out_at = out_ptr + rb[:, None] * stride_out + rm[None, :] * (2 if COMPLEX_OUT else 1)
        tl.store(out_at, acc_r, mask=out_mask)
        if COMPLEX_OUT:
            tl.store(out_at + 1, acc_i, mask=out_mask)


def default_blocks(batch: int, group: int, aligned: bool) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_M, BLOCK_K): tl.dot wants 16 rows at least, so decode pads the batch to 16 in
    registers; narrow M tiles give a decode step enough programs to fill the GPU; an aligned K tile
    inside one group reads one scale per row instead of one per entry."""
    block_b, block_m, block_k = (16, 32, 128) if batch <= 16 else (64, 64, 64)
    while aligned and block_k > 16 and group % block_k:
        block_k //= 2
    return block_b, block_m, block_k


_DOT = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def fourier_matmul(spec: torch.Tensor, rt, dtype: torch.dtype,
                   blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Z (B, m) float32, or (B, m, 2) (re, im) for rfft2, from the activation spectrum `spec`
    (B, h) complex64 and the kernel layout `rt` (formats/fourier_runtime.KernelLayout); `dtype`
    is the activation's (the tiles go into the dot in it; float32 stays float32)."""
    if triton is None:
        raise RuntimeError("the fourier kernel needs Triton (it comes with CUDA builds of torch). "
                           "Fix: use forward_mode 'dequant', 'cached' or 'spectral'.")
    pairs = torch.view_as_real(spec.contiguous())  # (B, h, 2)
    batch, m = spec.shape[0], rt.codes.shape[0]
    out = torch.empty((batch, m, 2) if rt.complex_out else (batch, m), device=spec.device, dtype=torch.float32)
    block_b, block_m, block_k = blocks or default_blocks(batch, rt.group, rt.aligned)
    aligned = rt.aligned and rt.group % block_k == 0
    edges = list(rt.edge_cols) + [0, 0]
    grid = (triton.cdiv(m, block_m), triton.cdiv(batch, block_b))
    dot = getattr(tl, _DOT.get(dtype, "float32"))
    _fourier_matmul_kernel[grid](
        pairs, rt.codes, rt.lut, rt.scales, rt.group_start, rt.group_offset, rt.edges, out,
        batch, m, rt.k_reg, pairs.stride(0), rt.codes.stride(0), out.stride(0), edges[0], edges[1],
        GROUP=rt.group, ALIGNED=aligned, NCODES=rt.lut.shape[0] // 2, N_EDGE=len(rt.edge_cols),
        COMPLEX_OUT=rt.complex_out, DOT_DTYPE=dot, BLOCK_B=block_b, BLOCK_M=block_m, BLOCK_K=block_k)
    return out
