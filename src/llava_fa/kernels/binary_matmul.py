"""`x @ W.T` straight from the `binary` format's sign bits, in one Triton kernel (decode-sized batches).

Layout (built once per device on first use by `layout_for`, kept in the layer's `_kernel` dict, which
`.to()` and `load_state_dict` clear; never in the state_dict):
- `signs`: the first-order sign bits as int32 words, (out, ceil(in/32)): bit k % 32 of word k // 32
  is column k (the stored bytes are already in this order: a zero-copy view when in % 32 == 0);
- `plane2`: one more bit plane of the same shape, merging what is per weight besides the sign: the
  group bitmap at non-salient columns and the order-2 residual sign at salient columns (the format
  ignores the bitmap there). One plane, read with the signs' indexing, instead of the compact
  residual bits, whose position would depend on the column's rank among the salient ones;
- `sal_words`: the salient column mask as int32 words (in/32 words; shared by every row);
- the float16 tables (row scales, means, residual scales and means, column scales) are the stored
  int16 buffers themselves, bit-cast in the kernel: no copy.
So the kernel reads 1 bit per weight (2 with a bitmap or salient columns) plus the tables; the
layer holds its stored buffers plus `plane2` (and a padded copy of the signs when in % 32 != 0).

Design: with the block b fixed, the row's scale and mean take only G (<= 3) values, the group of
a weight is its plane2 bit at non-salient columns and the last slot at salient ones, and the
salient columns are the same for every row. So one row's sum over the block factors into a few
dot products of 0/1 bit matrices (B = sign bit, P = plane2 bit, B*P) with vectors built from x
alone (x' = x * col, each masked to the block's salient or non-salient columns):

    sum_j x_j W_ij = sc0 (2<B,x'ns> - X'ns) + (sc1 - sc0)(2<BP,x'ns> - <P,x'ns>) + m0 Xns + (m1 - m0)<P,xns>
                     + sc2 (2<B,x'sal> - X'sal) + (m2 + rm - rs) Xsal + 2 rs <P,xsal>

(capital X: sums of the vector over the block). Per weight the kernel only extracts bits and casts
them to 0/1 halves; the products run on tensor cores (tl.dot with the tokens padded to 16), the
scales are applied per row and block in float32. A K tile that spans several format blocks (block
size not a multiple of the tile) is summed block by block with masked x vectors. Programs split
the rows and, when rows alone would not fill the GPU, K (float32 atomics into a zeroed buffer).

Not handled: PB-LLM's 8-bit outliers (`n_outliers` > 0) replace whole weights and would need a
sparse gather; `runs` refuses such layers and they take the dequant path. Triton is an optional
import: without it `available()` is False; `TRITON_INTERPRET=1` runs the kernel on CPU tensors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava_fa.kernels.triton_support import as_rows, available, require_triton, tl, triton  # noqa: F401


def supports(layer) -> bool:
    """Whether the kernel computes this layer (PB-LLM's 8-bit outliers are not handled)."""
    return not layer.n_outliers


@dataclass
class BinaryLayout:
    """The kernel's view of one `binary` layer on one device (see the module docstring)."""

    signs: torch.Tensor  # int32 (out, words)
    plane2: torch.Tensor | None  # int32 (out, words): bitmap at non-salient columns, residual sign at salient
    sal_words: torch.Tensor | None  # int32 (words,)
    row_scales: torch.Tensor  # int16 float16 bits (out, n_blocks, G), the stored buffer
    means: torch.Tensor | None
    col_scales: torch.Tensor | None
    res_scales: torch.Tensor | None
    res_means: torch.Tensor | None
    block_size: int
    bitmap: bool

    def nbytes(self) -> int:
        """Bytes the kernel reads per call (every tensor of the layout)."""
        ts = [t for t in vars(self).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in ts)


def _words(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bit rows (8 codes a byte, little-endian) as int32 words of 32 codes (a view when no padding)."""
    pad = (-packed.shape[-1]) % 4
    if pad:
        packed = F.pad(packed, (0, pad))
    return packed.contiguous().view(torch.int32)


def _unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed[..., None] >> shifts) & 1).flatten(-2)[..., :n]


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    bits = F.pad(bits, (0, (-bits.shape[-1]) % 8)).unflatten(-1, (-1, 8))
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def build_layout(layer) -> BinaryLayout:
    """The kernel layout of a `BinaryLinear` from its stored buffers, on the buffers' device."""
    salient = layer.use_salient and layer.n_salient > 0
    plane2 = sal = None
    if salient:
        sal = _words(layer.salient_cols)
        cols = _unpack_bits(layer.salient_cols, layer.in_features).bool().nonzero().squeeze(1)
        full = torch.zeros(layer.out_features, layer.in_features, dtype=torch.uint8, device=cols.device)
        full[:, cols] = _unpack_bits(layer.res_signs, layer.n_salient)
        plane2 = _words(_pack_bits(full))
        del full
        if layer.use_bitmap:
            plane2 = (_words(layer.bitmap) & ~sal) | (plane2 & sal)
    elif layer.use_bitmap:
        plane2 = _words(layer.bitmap)
    get = lambda name: getattr(layer, name, None)  # noqa: E731
    return BinaryLayout(_words(layer.signs), plane2, sal, layer.row_scales, get("means"), get("col_scales"),
                        get("res_scales") if salient else None, get("res_means") if salient else None,
                        layer.block_size, layer.use_bitmap)


def layout_for(layer) -> BinaryLayout:
    """The layer's layout, built on first use and kept in its `_kernel` dict (dropped by .to / load_state_dict)."""
    cache = layer.__dict__.setdefault("_kernel", {})
    key = layer.signs.device
    if key not in cache:
        cache.clear()  # one device at a time
        cache[key] = build_layout(layer)
    return cache[key]


if triton is not None:

    @triton.jit
    def _bit_matrix(ptr, rn, rw, N, KW, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """(BLOCK_N, BLOCK_K) 0/1 int32 of a packed plane: bit k % 32 of word k // 32 of each row."""
        words = tl.load(ptr + rn[:, None] * KW + rw[None, :], mask=(rn[:, None] < N) & (rw[None, :] < KW), other=0)
        bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
        return tl.reshape(bits, (BLOCK_N, BLOCK_K))

    @triton.jit
    def _f16(ptr, idx, mask):
        """float32 values of float16 bit patterns stored as int16."""
        return tl.load(ptr + idx, mask=mask, other=0).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _masked(xt, keep, col, COLS: tl.constexpr):
        """x and x * col at the kept columns (zero elsewhere), in x's dtype, with their per-token sums."""
        x = tl.where(keep[:, None], xt.to(tl.float32), 0.0).to(xt.dtype)
        xc = x
        if COLS:
            xc = (x.to(tl.float32) * col[:, None]).to(xt.dtype)
        return x, tl.sum(x.to(tl.float32), 0)[None, :], xc, tl.sum(xc.to(tl.float32), 0)[None, :]

    @triton.jit
    def _block_terms(acc, Bm, Pm, BPm, xt, col, sal, rk, rn, b, N, K, n_blocks, block_size,
                     scale_ptr, mean_ptr, rs_ptr, rm_ptr, G: tl.constexpr, BITMAP: tl.constexpr,
                     SALIENT: tl.constexpr, MEANS: tl.constexpr, COLS: tl.constexpr):
        """acc (BLOCK_N, BLOCK_M) plus the rows' sums over the columns of format block b in this tile."""
        inb = (rk // block_size == b) & (rk < K)
        rowm = (rn < N) & (b < n_blocks)
        t = (rn * n_blocks + b) * G
        xns, sx_ns, xcns, sxc_ns = _masked(xt, inb & (sal == 0), col, COLS)
        sc0 = _f16(scale_ptr, t, rowm)[:, None]
        acc += sc0 * (2 * tl.dot(Bm, xcns) - sxc_ns)
        if MEANS:
            m0 = _f16(mean_ptr, t, rowm)[:, None]
            acc += m0 * sx_ns
        if BITMAP:
            sc1 = _f16(scale_ptr, t + 1, rowm)[:, None]
            acc += (sc1 - sc0) * (2 * tl.dot(BPm, xcns) - tl.dot(Pm, xcns))
            if MEANS:
                acc += (_f16(mean_ptr, t + 1, rowm)[:, None] - m0) * tl.dot(Pm, xns)
        if SALIENT:
            xsal, sx_sal, xcsal, sxc_sal = _masked(xt, inb & (sal != 0), col, COLS)
            rs = _f16(rs_ptr, rn * n_blocks + b, rowm)[:, None]
            base = _f16(rm_ptr, rn * n_blocks + b, rowm)[:, None] - rs
            if MEANS:
                base += _f16(mean_ptr, t + G - 1, rowm)[:, None]
            acc += _f16(scale_ptr, t + G - 1, rowm)[:, None] * (2 * tl.dot(Bm, xcsal) - sxc_sal)
            acc += base * sx_sal + 2 * rs * tl.dot(Pm, xsal)
        return acc

    @triton.jit
    def _binary_matmul_kernel(x_ptr, out_ptr, bias_ptr, s1_ptr, p2_ptr, sal_ptr, col_ptr, scale_ptr, mean_ptr,
                              rs_ptr, rm_ptr, M, N, K, KW, n_blocks, block_size, stride_xm, stride_om,
                              G: tl.constexpr, BITMAP: tl.constexpr, SALIENT: tl.constexpr, MEANS: tl.constexpr,
                              COLS: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                              TILES: tl.constexpr, SUBS: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # trip counts are constexpr (TILES K tiles per program, SUBS format blocks per tile): Triton
        # 3.6's interpreter cannot loop over a runtime bound, and a fixed count lets the compiler unroll
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for t in range(TILES):
            k0 = (pid_k * TILES + t) * BLOCK_K
            rk = k0 + tl.arange(0, BLOCK_K)
            rw = k0 // 32 + tl.arange(0, BLOCK_K // 32)
            xt = tl.load(x_ptr + rm[None, :] * stride_xm + rk[:, None], mask=(rk[:, None] < K) & (rm[None, :] < M),
                         other=0.0)  # x^T tile (BLOCK_K, BLOCK_M)
            Bm = _bit_matrix(s1_ptr, rn, rw, N, KW, BLOCK_N, BLOCK_K).to(xt.dtype)
            Pm, BPm = Bm, Bm
            if BITMAP or SALIENT:
                Pm = _bit_matrix(p2_ptr, rn, rw, N, KW, BLOCK_N, BLOCK_K).to(xt.dtype)
                BPm = Bm * Pm
            sal = rk * 0
            if SALIENT:
                words = tl.load(sal_ptr + rw, mask=rw < KW, other=0)
                sal = tl.reshape((words[:, None] >> tl.arange(0, 32)[None, :]) & 1, (BLOCK_K,))
            col = tl.zeros((BLOCK_K,), dtype=tl.float32)
            if COLS:
                col = _f16(col_ptr, rk, rk < K)
            for sb in tl.static_range(SUBS):
                acc = _block_terms(acc, Bm, Pm, BPm, xt, col, sal, rk, rn, k0 // block_size + sb, N, K, n_blocks,
                                   block_size, scale_ptr, mean_ptr, rs_ptr, rm_ptr, G, BITMAP, SALIENT, MEANS, COLS)
        if HAS_BIAS:
            first = (pid_k == 0).to(tl.float32)
            acc += first * tl.load(bias_ptr + rn, mask=rn < N, other=0).to(tl.float32)[:, None]
        offs = out_ptr + rm[None, :] * stride_om + rn[:, None]
        omask = (rm[None, :] < M) & (rn[:, None] < N)
        if ATOMIC:
            tl.atomic_add(offs, acc, mask=omask)
        else:
            tl.store(offs, acc.to(out_ptr.dtype.element_ty), mask=omask)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


@functools.lru_cache(maxsize=None)  # the launch parameters are host work at every decode step: computed once
def default_blocks(m: int, n: int, k: int, block_size: int, sms: int = 132) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K). tl.dot wants 16 tokens at least, so a decode step pads
    (free: the tensor cores are idle anyway). The K tile is the largest of 128/64/32 dividing the
    format block (one block per tile), else 64. K is split when the row tiles alone would leave the
    GPU with fewer than two programs per SM. `scripts/bench_binary_kernel.py --sweep` times others."""
    block_m = 16 if m <= 16 else 64
    block_n = 32
    block_k = next((bk for bk in (128, 64, 32) if block_size % bk == 0), 64)
    programs = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    k_tiles = triton.cdiv(k, block_k)
    split = max(1, min(triton.cdiv(2 * sms, programs), k_tiles // 4))
    return block_m, block_n, block_k, split


@functools.lru_cache(maxsize=None)
def _subs(k: int, block_k: int, block_size: int) -> int:
    """Most format blocks any K tile touches."""
    return max((min(k0 + block_k, k) - 1) // block_size - k0 // block_size + 1 for k0 in range(0, k, block_k))


def binary_matmul(x: torch.Tensor, lay: BinaryLayout, bias: torch.Tensor | None = None,
                  blocks: tuple[int, int, int, int] | None = None, num_warps: int = 4) -> torch.Tensor:
    """`x @ W.T (+ bias)` for a layer's kernel layout; x is (..., in_features)."""
    require_triton("fused binary")
    (lead, x2), k = as_rows(x), x.shape[-1]
    (m, n), G = (x2.shape[0], lay.signs.shape[0]), lay.row_scales.shape[2]
    block_m, block_n, block_k, split = blocks or default_blocks(m, n, k, lay.block_size, _sm_count(x.device))
    k_tiles = triton.cdiv(k, block_k)
    tiles = triton.cdiv(k_tiles, split)
    split = triton.cdiv(k_tiles, tiles)
    out = (torch.zeros if split > 1 else torch.empty)(m, n, device=x.device,
                                                      dtype=torch.float32 if split > 1 else x.dtype)
    s1 = lay.signs
    opt = lambda t: s1 if t is None else t  # noqa: E731  (a valid pointer the kernel never reads)
    grid = (triton.cdiv(n, block_n), split, triton.cdiv(m, block_m))
    _binary_matmul_kernel[grid](
        x2, out, opt(bias), s1, opt(lay.plane2), opt(lay.sal_words), opt(lay.col_scales), lay.row_scales,
        opt(lay.means), opt(lay.res_scales), opt(lay.res_means), m, n, k, s1.shape[1], lay.row_scales.shape[1],
        lay.block_size, x2.stride(0), out.stride(0),
        G=G, BITMAP=lay.bitmap, SALIENT=lay.sal_words is not None, MEANS=lay.means is not None,
        COLS=lay.col_scales is not None, HAS_BIAS=bias is not None, ATOMIC=split > 1, TILES=tiles,
        SUBS=_subs(k, block_k, lay.block_size), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps)
    return out.to(x.dtype).reshape(*lead, n)


def layer_matmul(layer, x: torch.Tensor) -> torch.Tensor:
    """y = x W^T + b for a `BinaryLinear` through the kernel (its layout built on first use)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return binary_matmul(x, layout_for(layer), bias)
