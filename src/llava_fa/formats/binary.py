"""`binary`: sign bits with per-row (per block, per group) scales, the format of the binarization family.

One format serves BiLLM, ARB-LLM (ARB, ARB-X, ARB-RC), PB-LLM and SAB-LVLM. The input columns are
cut into blocks of `block_size` (the last block may be partial). Within a block, every weight of a
row belongs to one group: the non-salient weights split by an optional `bitmap` (2 groups) and,
optionally, the salient columns (one more group). The dense weight of row i, column j is

    W[i,j] = mean[i,b,g] + scale[i,b,g] * col[j] * s1[i,j]
             + [j salient] * (res_mean[i,b] + res_scale[i,b] * s2[i,j])     (order-2 residual)
    and, where `outlier_mask` is set (PB-LLM), W[i,j] = (code - 128) * outlier_scale[i,b]

with s = +-1, b the block of j and g its group. Stored tensors (fp16 values kept as int16 bit
patterns, like `affine`, so a dtype cast of the model cannot widen them):
- `signs` uint8 (out, ceil(in/8)): first-order signs, 1 bit per weight;
- `row_scales` int16 (out, n_blocks, n_groups); `means` int16 same shape (if `means`);
- `col_scales` int16 (in,) (if `col_scales`, ARB-RC / SAB);
- `salient_cols` uint8 (ceil(in/8),): salient column mask, 1 bit per column (if `salient`);
- `res_signs` uint8 (out, ceil(n_salient/8)): order-2 signs on the salient columns only;
  `res_scales`, `res_means` int16 (out, n_blocks) (if `salient`);
- `bitmap` uint8 (out, ceil(in/8)): group bitmap of the non-salient weights (if `bitmap`);
- `outlier_mask` uint8 (out, ceil(in/8)), `outlier_codes` uint8 (n_outliers,) in row-major order of
  the mask, `outlier_scales` int16 (out, n_blocks) (if `n_outliers` > 0, PB-LLM).

Group slots: non-salient weights take slot `bitmap[i,j]` (0 without a bitmap); salient columns
take the last slot. `n_groups = 1 + bitmap + salient`.

Forward modes: "auto", "cached", "dequant" as for every format (formats/base.py; "auto" tries the
kernel first for float16/bfloat16 on CUDA), and "fused": one Triton kernel computes y from the sign
bits (`kernels/binary_matmul.py`), W is never formed. Where it cannot run (no Triton, CPU tensors,
PB-LLM's 8-bit outliers) "fused" computes what "dequant" does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.formats.base import Backend, CompressedLinear, dequant_forward
from llava_fa.formats.registry import register_format
from llava_fa.kernels import binary_matmul
from llava_fa.quantizers.float16 import from_bits, to_bits
from llava_fa.quantizers.packing import pack, packed_width, unpack

# Buffers that only say where things are (masks, bitmaps, positions): the published bpw
# convention of the binarization papers leaves them out.
MASK_BUFFERS = ("salient_cols", "bitmap", "outlier_mask")
# Buffers of per-weight codes (sign bits, residual bits, 8-bit outliers): the "weight bits".
CODE_BUFFERS = ("signs", "res_signs", "outlier_codes")


def _bits(mask: torch.Tensor) -> torch.Tensor:
    return pack(mask.to(torch.int64), 1)


@dataclass
class BinaryParts:
    """The float description of a binarized weight (what the methods produce; fp16-rounded by the format).

    Shapes: signs/bitmap/res_signs_full/outlier_mask (out, in) bool; row_scales/means (out, nb, G);
    col_scales (in,); salient (in,) bool; res_scales/res_means/outlier_scales (out, nb);
    outlier_codes (n,) int in [0, 255] in row-major order of outlier_mask.
    """

    signs: torch.Tensor
    row_scales: torch.Tensor
    means: torch.Tensor | None = None
    col_scales: torch.Tensor | None = None
    salient: torch.Tensor | None = None
    res_signs_full: torch.Tensor | None = None
    res_scales: torch.Tensor | None = None
    res_means: torch.Tensor | None = None
    bitmap: torch.Tensor | None = None
    outlier_mask: torch.Tensor | None = None
    outlier_codes: torch.Tensor | None = None
    outlier_scales: torch.Tensor | None = None


def reconstruct(p: BinaryParts, block_size: int) -> torch.Tensor:
    """Dense weight from float parts (the one formula the format and the methods share)."""
    out_f, in_f = p.signs.shape
    dev = p.signs.device
    blk = torch.arange(in_f, device=dev) // block_size
    G = p.row_scales.shape[2]
    gid = torch.zeros(out_f, in_f, dtype=torch.long, device=dev)
    if p.bitmap is not None:
        gid = p.bitmap.long()
    if p.salient is not None:
        gid = torch.where(p.salient[None, :], torch.full_like(gid, G - 1), gid)
    flat = blk[None, :] * G + gid
    s1 = p.signs.float() * 2 - 1
    scale = p.row_scales.reshape(out_f, -1).gather(1, flat)
    col = p.col_scales[None, :] if p.col_scales is not None else 1.0
    W = scale * col * s1
    if p.means is not None:
        W = W + p.means.reshape(out_f, -1).gather(1, flat)
    if p.salient is not None and bool(p.salient.any()):
        s2 = p.res_signs_full.float() * 2 - 1
        res = p.res_means[:, blk] + p.res_scales[:, blk] * s2
        W = W + res * p.salient[None, :].float()
    if p.outlier_mask is not None and p.outlier_codes is not None and p.outlier_codes.numel():
        vals = (p.outlier_codes.float() - 128) * p.outlier_scales[:, blk][p.outlier_mask]
        W = W.masked_scatter(p.outlier_mask, vals)
    return W


def round_parts(p: BinaryParts) -> BinaryParts:
    """The same parts with every float value rounded to fp16, as the format stores them."""
    r = lambda t: None if t is None else t.float().to(torch.float16).float()  # noqa: E731
    return BinaryParts(p.signs, r(p.row_scales), r(p.means), r(p.col_scales), p.salient, p.res_signs_full,
                       r(p.res_scales), r(p.res_means), p.bitmap, p.outlier_mask, p.outlier_codes,
                       r(p.outlier_scales))


@register_format
class BinaryLinear(CompressedLinear):
    format = "binary"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, block_size: int = 128,
                 bitmap: bool = False, salient: bool = False, n_salient: int = 0, means: bool = True,
                 col_scales: bool = False, n_outliers: int = 0):
        super().__init__(in_features, out_features, bias)
        self.block_size = int(block_size)
        self.use_bitmap, self.use_salient, self.use_means = bool(bitmap), bool(salient), bool(means)
        self.use_col_scales = bool(col_scales)
        self.n_salient, self.n_outliers = int(n_salient), int(n_outliers)
        if self.block_size < 1 or self.n_salient < 0 or self.n_outliers < 0 or self.n_salient > in_features:
            raise ValueError("binary: bad block_size / n_salient / n_outliers")
        nb = -(-in_features // self.block_size)
        G = 1 + self.use_bitmap + self.use_salient
        self.n_blocks, self.n_groups = nb, G
        u8, i16, o, n = torch.uint8, torch.int16, out_features, in_features
        self.register_buffer("signs", torch.zeros(o, packed_width(n, 1), dtype=u8))
        self.register_buffer("row_scales", torch.zeros(o, nb, G, dtype=i16))
        if self.use_means:
            self.register_buffer("means", torch.zeros(o, nb, G, dtype=i16))
        if self.use_col_scales:
            self.register_buffer("col_scales", torch.zeros(n, dtype=i16))
        if self.use_salient:
            self.register_buffer("salient_cols", torch.zeros(packed_width(n, 1), dtype=u8))
            self.register_buffer("res_signs", torch.zeros(o, packed_width(self.n_salient, 1), dtype=u8))
            self.register_buffer("res_scales", torch.zeros(o, nb, dtype=i16))
            self.register_buffer("res_means", torch.zeros(o, nb, dtype=i16))
        if self.use_bitmap:
            self.register_buffer("bitmap", torch.zeros(o, packed_width(n, 1), dtype=u8))
        if self.n_outliers:
            self.register_buffer("outlier_mask", torch.zeros(o, packed_width(n, 1), dtype=u8))
            self.register_buffer("outlier_codes", torch.zeros(self.n_outliers, dtype=u8))
            self.register_buffer("outlier_scales", torch.zeros(o, nb, dtype=i16))

    def params(self) -> dict:
        return {"block_size": self.block_size, "bitmap": self.use_bitmap, "salient": self.use_salient,
                "n_salient": self.n_salient, "means": self.use_means, "col_scales": self.use_col_scales,
                "n_outliers": self.n_outliers}

    @classmethod
    def from_parts(cls, p: BinaryParts, *, block_size: int, bias: torch.Tensor | None = None) -> "BinaryLinear":
        out_f, in_f = p.signs.shape
        n_sal = int(p.salient.sum()) if p.salient is not None else 0
        n_out = int(p.outlier_mask.sum()) if p.outlier_mask is not None else 0
        mod = cls(in_f, out_f, bias is not None, block_size=block_size, bitmap=p.bitmap is not None,
                  salient=p.salient is not None, n_salient=n_sal, means=p.means is not None,
                  col_scales=p.col_scales is not None, n_outliers=n_out)
        if p.row_scales.shape != mod.row_scales.shape:
            raise ValueError(f"row_scales shape {tuple(p.row_scales.shape)} != {tuple(mod.row_scales.shape)}")
        mod.signs = _bits(p.signs)
        mod.row_scales = to_bits(p.row_scales)
        if p.means is not None:
            mod.means = to_bits(p.means)
        if p.col_scales is not None:
            mod.col_scales = to_bits(p.col_scales)
        if p.salient is not None:
            mod.salient_cols = _bits(p.salient)
            mod.res_signs = _bits(p.res_signs_full[:, p.salient])
            mod.res_scales = to_bits(p.res_scales)
            mod.res_means = to_bits(p.res_means)
        if p.bitmap is not None:
            mod.bitmap = _bits(p.bitmap)
        if n_out:
            mod.outlier_mask = _bits(p.outlier_mask)
            mod.outlier_codes = p.outlier_codes.to(torch.uint8).contiguous()
            mod.outlier_scales = to_bits(p.outlier_scales)
        mod.set_bias(bias)
        return mod

    def parts(self) -> BinaryParts:
        """Unpack the stored buffers back to float parts."""
        n = self.in_features
        bit = lambda t, k: unpack(t, 1, k).bool()  # noqa: E731
        p = BinaryParts(bit(self.signs, n), from_bits(self.row_scales))
        if self.use_means:
            p.means = from_bits(self.means)
        if self.use_col_scales:
            p.col_scales = from_bits(self.col_scales)
        if self.use_salient:
            p.salient = bit(self.salient_cols, n)
            full = torch.zeros(self.out_features, n, dtype=torch.bool, device=self.signs.device)
            if self.n_salient:
                full[:, p.salient] = bit(self.res_signs, self.n_salient)
            p.res_signs_full, p.res_scales, p.res_means = full, from_bits(self.res_scales), from_bits(self.res_means)
        if self.use_bitmap:
            p.bitmap = bit(self.bitmap, n)
        if self.n_outliers:
            p.outlier_mask = bit(self.outlier_mask, n)
            p.outlier_codes = self.outlier_codes.long()
            p.outlier_scales = from_bits(self.outlier_scales)
        return p

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return reconstruct(self.parts(), self.block_size).to(dtype)

    def bits_breakdown(self) -> dict[str, int]:
        """Stored bits per buffer (sums to storage_bits())."""
        return {k: t.numel() * t.element_size() * 8 for k, t in self.stored_tensors().items()}

    def bpw_conventions(self) -> dict[str, float]:
        """bpw three ways: `stored` (everything), `no_masks` (without salient-column masks, group
        bitmaps and outlier positions: the convention of the binarization papers' tables), and
        `codes` (per-weight code bits only: signs, residual signs, 8-bit outlier values)."""
        b = self.bits_breakdown()
        nw = self.in_features * self.out_features
        return {"stored": sum(b.values()) / nw,
                "no_masks": sum(v for k, v in b.items() if k not in MASK_BUFFERS) / nw,
                "codes": sum(v for k, v in b.items() if k in CODE_BUFFERS) / nw}


def _kernel_runs(layer: BinaryLinear, x: torch.Tensor) -> bool:
    return binary_matmul.available(x) and binary_matmul.supports(layer)


def _half_kernel_runs(layer: BinaryLinear, x: torch.Tensor) -> bool:
    """"auto" uses the kernel on CUDA for float16/bfloat16 (float32 would run its dots in TF32)."""
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and _kernel_runs(layer, x)


_FUSED = (Backend(binary_matmul.layer_matmul, _kernel_runs), Backend(dequant_forward))
BinaryLinear.backends = {**CompressedLinear.backends, "fused": _FUSED,
                         "auto": (Backend(binary_matmul.layer_matmul, _half_kernel_runs),
                                  *CompressedLinear.backends["auto"])}
