"""`lowrank`: W = Q + A B diag(1/s), an optional quantized base plus low-rank factors.

Used by the low-rank baselines (asvd, svd-llm: no base; lqer, caldera: with a base).

- `Q` (optional, `base_bits` > 0): affine codes as in the `affine` format (formats/affine.py):
  `q_weight` uint8 (m, ceil(n/8)*b), `q_scales` int16 (m, n/base_group_size) float16 bit patterns,
  `q_zeros` uint8 (packed integer zeros, absent when `base_sym`);
- `A` (m x r), `B` (r x n):
  - `lr_bits` 16: `lr_a` int16 (m, r) and `lr_b` int16 (r, n), float16 bit patterns;
  - `lr_bits` 2..8: affine codes of A^T (r, m) and of B (r, n), groups of `a_group` (resp.
    `b_group`) consecutive entries along each row (one row per rank component): `lr_a` /
    `lr_b` uint8 packed codes, `lr_a_scales` / `lr_b_scales` int16, `lr_a_zeros` / `lr_b_zeros`
    uint8 packed zeros (asymmetric, codes in [0, 2^b - 1], w = scale * (q - zero));
- `col_scale` int16 (n,), float16 bit patterns of s (only with `col_scale`): the ASVD-style input
  channel scale that is undone after the product (A B was fitted to (W - Q) diag(s)). Methods may
  instead fold diag(1/s) into B, which costs nothing; the vector exists for quantized factors.

storage_bits() counts these buffers, so bpw includes every scale, zero and the padding of packing.
"""

from __future__ import annotations

from typing import Any

import torch

from llava_fa.formats.base import CompressedLinear
from llava_fa.formats.budget import largest_rank_within
from llava_fa.formats.registry import register_format
from llava_fa.quantizers.float16 import f16_round, from_bits, to_bits
from llava_fa.quantizers import (AffineSpec, dequantize_grouped, group_count, pack, packed_width, quantize_grouped,
                                 resolve_group_size, unpack)

def factor_group(group_size: int, width: int) -> int:
    """A factor's group size for a row of `width`: `group_size` if it divides it, else the whole row."""
    if group_size == -1 or group_size <= 0 or width % group_size:
        return width
    return group_size


def layout(m: int, n: int, p: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every stored tensor of a `lowrank` layer of shape (m, n)."""
    u8, i16 = torch.uint8, torch.int16
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if p["base_bits"]:
        b, g = p["base_bits"], resolve_group_size(p["base_group_size"], n)
        out["q_weight"] = ((m, packed_width(n, b)), u8)
        out["q_scales"] = ((m, group_count(n, g)), i16)
        if not p["base_sym"]:
            out["q_zeros"] = ((packed_width(m * group_count(n, g), b),), u8)
    r, bits = p["rank"], p["lr_bits"]
    if r:
        if bits == 16:
            out["lr_a"] = ((m, r), i16)
            out["lr_b"] = ((r, n), i16)
        else:
            for name, width, g in (("lr_a", m, p["a_group"]), ("lr_b", n, p["b_group"])):
                out[name] = ((r, packed_width(width, bits)), u8)
                out[f"{name}_scales"] = ((r, width // g), i16)
                out[f"{name}_zeros"] = ((packed_width(r * (width // g), bits),), u8)
    if p["col_scale"]:
        out["col_scale"] = ((n,), i16)
    return out


def layout_bits(m: int, n: int, p: dict[str, Any]) -> int:
    return sum(torch.Size(s).numel() * torch.empty((), dtype=dt).element_size() * 8 for s, dt in layout(m, n, p).values())


def normalize_params(m: int, n: int, *, rank: int = 0, lr_bits: int = 16, a_group: int = 64, b_group: int = 64,
                     base_bits: int = 0, base_group_size: int = 64, base_sym: bool = False,
                     col_scale: bool = False) -> dict[str, Any]:
    if int(lr_bits) != 16 and not 2 <= int(lr_bits) <= 8:
        raise ValueError(f"lowrank: lr_bits must be 16 or from 2 to 8, got {lr_bits}")
    if not 0 <= int(base_bits) <= 8:
        raise ValueError(f"lowrank: base_bits must be from 0 (no base) to 8, got {base_bits}")
    if not 0 <= int(rank) <= min(m, n):
        raise ValueError(f"lowrank: rank must be from 0 to {min(m, n)}, got {rank}")
    p = {"rank": int(rank), "lr_bits": int(lr_bits), "a_group": factor_group(int(a_group), m),
         "b_group": factor_group(int(b_group), n), "base_bits": int(base_bits),
         "base_group_size": resolve_group_size(int(base_group_size), n) if base_bits else int(base_group_size),
         "base_sym": bool(base_sym), "col_scale": bool(col_scale)}
    return p


def max_rank_for_bits(m: int, n: int, budget_bits: float, **params: Any) -> int:
    """The largest rank whose `lowrank` layer (other parameters fixed) fits in `budget_bits`."""
    def bits_at(rank: int) -> int:
        return layout_bits(m, n, normalize_params(m, n, **{**params, "rank": rank}))

    return largest_rank_within(bits_at, budget_bits, min(m, n))


@register_format
class LowRankLinear(CompressedLinear):
    format = "lowrank"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, **params: Any):
        super().__init__(in_features, out_features, bias)
        self._params = normalize_params(out_features, in_features, **params)
        for name, (shape, dtype) in layout(out_features, in_features, self._params).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    # --- encode --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, m: int, n: int, *, A: torch.Tensor | None = None, B: torch.Tensor | None = None,
              base: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, base_bits: int = 0,
              base_sym: bool = False, lr_bits: int = 16, a_group: int = 64, b_group: int = 64,
              col_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
              base_group: int | None = None) -> "LowRankLinear":
        """From factors A (m, r), B (r, n), base codes/scale/zero (as quantize_grouped returns, in
        groups of `base_group`: may be left out where they divide the width) and s."""
        rank = 0 if A is None else A.shape[1]
        if base_group is None:
            base_group = n // base[1].shape[1] if base is not None else 64
        mod = cls(n, m, bias is not None, rank=rank, lr_bits=lr_bits, a_group=a_group, b_group=b_group,
                  base_bits=base_bits if base is not None else 0, base_group_size=base_group, base_sym=base_sym,
                  col_scale=col_scale is not None)
        if base is not None:
            mod.set_base(*base)
        if rank:
            mod.set_factors(A, B)
        if col_scale is not None:
            mod.col_scale = to_bits(col_scale)
        mod.set_bias(bias)
        return mod

    def set_base(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        b = self._params["base_bits"]
        self.q_weight = pack(codes.to(torch.int64), b)
        self.q_scales = to_bits(scale)
        if not self._params["base_sym"]:
            self.q_zeros = pack(zero.reshape(-1).round().to(torch.int64), b)

    def set_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        p = self._params
        if p["lr_bits"] == 16:
            self.lr_a, self.lr_b = to_bits(A), to_bits(B)
            return
        for name, T, g in (("lr_a", A.T, p["a_group"]), ("lr_b", B, p["b_group"])):
            codes, scale, zero = quantize_factor(T, p["lr_bits"], g)
            setattr(self, name, pack(codes, p["lr_bits"]))
            setattr(self, f"{name}_scales", to_bits(scale))
            setattr(self, f"{name}_zeros", pack(zero.reshape(-1).round().to(torch.int64), p["lr_bits"]))

    def set_factor_codes(self, name: str, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Store codes chosen by the method (e.g. GPTQ) for `lr_a` (codes of A^T, (r, m)) or `lr_b` (r, n)."""
        bits = self._params["lr_bits"]
        setattr(self, name, pack(codes.to(torch.int64), bits))
        setattr(self, f"{name}_scales", to_bits(scale))
        setattr(self, f"{name}_zeros", pack(zero.reshape(-1).round().to(torch.int64), bits))

    # --- decode --------------------------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor | None:
        p = self._params
        if not p["base_bits"]:
            return None
        b, n = p["base_bits"], self.in_features
        scale = from_bits(self.q_scales)
        if p["base_sym"]:
            zero = torch.full_like(scale, 1 << (b - 1))
        else:
            zero = unpack(self.q_zeros, b, scale.numel()).reshape(scale.shape).float()
        return dequantize_grouped(unpack(self.q_weight, b, n), scale, zero, resolve_group_size(p["base_group_size"], n))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Dequantized A (m, r) and B (r, n), or None at rank 0."""
        p = self._params
        if not p["rank"]:
            return None
        if p["lr_bits"] == 16:
            return from_bits(self.lr_a), from_bits(self.lr_b)
        out = []
        for name, width in (("lr_a", self.out_features), ("lr_b", self.in_features)):
            scale = from_bits(getattr(self, f"{name}_scales"))
            zero = unpack(getattr(self, f"{name}_zeros"), p["lr_bits"], scale.numel()).reshape(scale.shape).float()
            out.append(dequantize_grouped(unpack(getattr(self, name), p["lr_bits"], width), scale, zero))
        return out[0].T.contiguous(), out[1]

    def lowrank_weight(self) -> torch.Tensor | None:
        f = self.factors()
        if f is None:
            return None
        L = f[0] @ f[1]
        if self._params["col_scale"]:
            L = L / from_bits(self.col_scale)[None, :]
        return L

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        W = torch.zeros(self.out_features, self.in_features, device=next(iter(self.buffers())).device
                        if len(self._buffers) else None)
        Q = self.base_weight()
        if Q is not None:
            W = W + Q
        L = self.lowrank_weight()
        if L is not None:
            W = W + L
        return W.to(dtype)


def quantize_factor(T: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine RTN of a factor (rows = rank components), groups of `group` along each row."""
    return quantize_grouped(T.float(), AffineSpec(bits, factor_group(group, T.shape[1]), False))


def fake_quantize_factor(T: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """What a factor (r, width) reads back as after storage (float16 round trip at 16 bits)."""
    if bits == 16:
        return f16_round(T)
    return dequantize_grouped(*quantize_factor(T, bits, group))


def split_svd(M: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD of M: U_r sqrt(S_r) (m, r), sqrt(S_r) V_r^T (r, n) and all singular values.

    Through the eigendecomposition of the Gram matrix on M's shorter side, in float64: one product
    and a symmetric eigensolver instead of a full SVD (the full float64 SVD was most of lqer's time on a
    7B model; timings in docs/results/scale_h200x2/README.md, fifth run). Squaring M costs
    float64's eps times (S_1 / S_i)^2 in relative accuracy of S_i: far below what the float32
    factors keep for any singular value a truncation keeps."""
    M = M.double()
    wide = M.shape[0] <= M.shape[1]
    gram = M @ M.mT if wide else M.mT @ M
    eigenvalues, vectors = torch.linalg.eigh(gram)  # ascending
    S = eigenvalues.flip(0).clamp_min(0).sqrt()
    side = vectors.flip(1)[:, :rank]  # U_r (wide) or V_r (tall)
    root = S[:rank].sqrt()
    # The other side's vectors times sqrt(S_r): M^T U_r / sqrt(S_r) (wide), M V_r / sqrt(S_r) (tall);
    # directions with S_i = 0 carry nothing and get zeros rather than 0 / 0.
    inv_root = torch.where(root > 0, 1 / root, torch.zeros_like(root))
    if wide:
        return (side * root).float(), ((side.mT @ M) * inv_root[:, None]).float(), S.float()
    return ((M @ side) * inv_root).float(), (root[:, None] * side.mT).float(), S.float()
