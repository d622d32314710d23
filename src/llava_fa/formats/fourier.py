"""`fourier`: a weight stored as a quantized Fourier spectrum plus a low-rank spectral part (LLaVA-FA).

The weight is W = diag(1/r) * inverse(L + Q) * diag(1/c) with (see transforms/fourier.py):
- `Q`, the quantized residual: the stored entries of the spectrum grid. Complex entries take
  PolarQuant codes (or cartesian codes), real entries (self-conjugate rows/columns, or all of W
  for transform `none`) take symmetric real codes;
- `L = A^T B`, the low-rank part, A (rank, m) and B (rank, h) complex (real for `none`);
- `c` (n,) and `r` (m,): the ODC column and row scales (absent when off).

Stored tensors (N_c complex entries, N_r real entries; every code stream is packed flat, 8 codes
at a time, see quantizers/packing.py; float16 values are kept as int16 bit patterns):
- polar: `mag_codes` (b_r bits), `phase_codes` (b_theta bits), `mag_scales` (one per group),
  `mag_levels` (2^b_r, only with lloyd levels);
- cartesian: `re_codes`, `im_codes` ((b_r + b_theta)/2 bits each), `cplx_scales`;
- `real_codes` (real_bits), `real_scales`;
- `lr_a`, `lr_b`: float16 (rank, m, 2) and (rank, h, 2) (re, im) when lr_bits is 16; else packed
  symmetric codes of the (re, im) values with one scale per rank component, `lr_a_scales`,
  `lr_b_scales`;
- `odc_cols` (n,), `odc_rows` (m,).
Groups: complex entries, and real entries of `none`, form groups of `group_size` consecutive
stored entries within one row of the grid (a row's last group may be shorter); the few real
entries of rfft/rfft2 form groups of consecutive entries across rows.

Forward passes (attribute `forward_mode`, a runtime choice, not stored):
- "cached" (default) and "dequant": as for every format (formats/base.py); "cached" rebuilds the
  dense weight once per device/dtype and keeps it as a plain attribute
  (not in the state_dict; dropped on load_state_dict and on .to()).
- "spectral": never forms W. With X = rfft(x / c) (fft for fft2), y = Re(ifft_m(conj(X) Q_w^T +
  (conj(X) B_w^T) A)) / r for rfft2/fft2 and the same without ifft_m for rfft, where Q_w is the
  grid of stored entries times their Parseval weight (2 complex, 1 real) with the mirrored half of
  rfft2's self-conjugate columns left empty: Re(ifft(v_w)) of such a column equals ifft of the
  full Hermitian column, which is the analytic expansion of the symmetry; B_w = B times the column
  weights. This reference path dequantizes the spectrum grid (a fused kernel would do it per tile)
  and runs complex GEMMs in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from llava_fa.formats.base import CompressedLinear
from llava_fa.formats.registry import register_format
from llava_fa.quantizers.packing import pack, packed_width, unpack
from llava_fa.quantizers.polar import (
    Groups,
    cartesian_dequantize,
    cartesian_quantize,
    flat_groups,
    flat_groups_count,
    from_bits,
    polar_dequantize,
    polar_quantize,
    row_groups,
    row_groups_count,
    sym_dequantize,
    sym_quantize,
    to_bits,
    uniform_levels,
)
from llava_fa.transforms import fourier as ft

TRANSFORMS = ft.MODES
QUANTIZERS = ("polar", "cartesian")
LEVELS = ("uniform", "lloyd")
LR_BITS = (16, 8, 4)


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


class Layout:
    """Counts of a `fourier` layer, from its shape and parameters alone (no tensors)."""

    def __init__(self, m: int, n: int, p: dict[str, Any]):
        self.m, self.n, self.p = m, n, p
        mode = p["transform"]
        self.h = ft.spectrum_shape(m, n, mode)[1]
        cplx_rows, real_rows = ft.row_counts(m, n, mode)
        self.n_complex, self.n_real = sum(cplx_rows), sum(real_rows)
        g = p["group_size"]
        self.complex_groups = row_groups_count(cplx_rows, g)
        self.real_row_aligned = mode in ("none", "rfft_out")  # real entries fill whole rows
        self.real_groups = (row_groups_count(real_rows, g) if self.real_row_aligned
                            else flat_groups_count(self.n_real, g))
        self.is_complex = mode != "none"
        self.lr_width = self.h if self.is_complex else n  # columns of B
        self.cart_bits = (p["mag_bits"] + p["phase_bits"]) // 2

    def buffers(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of every stored tensor."""
        p, u8, i16 = self.p, torch.uint8, torch.int16
        out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        if p["codes"] and self.n_complex:
            if p["quantizer"] == "polar":
                out["mag_codes"] = ((packed_width(self.n_complex, p["mag_bits"]),), u8)
                out["phase_codes"] = ((packed_width(self.n_complex, p["phase_bits"]),), u8)
                out["mag_scales"] = ((self.complex_groups,), i16)
                if p["levels"] == "lloyd":
                    out["mag_levels"] = ((1 << p["mag_bits"],), i16)
            else:
                out["re_codes"] = ((packed_width(self.n_complex, self.cart_bits),), u8)
                out["im_codes"] = ((packed_width(self.n_complex, self.cart_bits),), u8)
                out["cplx_scales"] = ((self.complex_groups,), i16)
        if p["codes"] and self.n_real:
            out["real_codes"] = ((packed_width(self.n_real, p["real_bits"]),), u8)
            out["real_scales"] = ((self.real_groups,), i16)
        r = p["rank"]
        if r:
            parts = 2 if self.is_complex else 1
            for name, width in (("lr_a", self.m), ("lr_b", self.lr_width)):
                if p["lr_bits"] == 16:
                    out[name] = ((r, width, 2) if self.is_complex else (r, width), i16)
                else:
                    out[name] = ((packed_width(r * width * parts, p["lr_bits"]),), u8)
                    out[f"{name}_scales"] = ((r,), i16)
        if p["col_scales"]:
            out["odc_cols"] = ((self.n,), i16)
        if p["row_scales"]:
            out["odc_rows"] = ((self.m,), i16)
        return out

    def storage_bits(self) -> int:
        return sum(torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size() * 8
                   for shape, dt in self.buffers().values())

    def formula(self) -> dict[str, int]:
        """Bits by the bpw formula, term by term (independent of `buffers`; a test checks they agree):
        low-rank reals * b_LR (+ 16 per component scale), complex codes * (b_r + b_theta), real codes *
        real_bits, (group scales + levels) * 16, ODC scales * 16. Packing pads each code stream to a
        multiple of 8 codes, the only term beyond the plain counts."""
        p = self.p
        codes = lowrank = scales = odc = 0
        if p["codes"]:
            if self.n_complex:
                if p["quantizer"] == "polar":
                    codes += _pad8(self.n_complex) * (p["mag_bits"] + p["phase_bits"])
                    scales += 16 * (self.complex_groups + ((1 << p["mag_bits"]) if p["levels"] == "lloyd" else 0))
                else:
                    codes += _pad8(self.n_complex) * 2 * self.cart_bits
                    scales += 16 * self.complex_groups
            codes += _pad8(self.n_real) * p["real_bits"] if self.n_real else 0
            scales += 16 * self.real_groups if self.n_real else 0
        if p["rank"]:
            reals = p["rank"] * (self.m + self.lr_width) * (2 if self.is_complex else 1)
            if p["lr_bits"] == 16:
                lowrank = 16 * reals
            else:
                per = (2 if self.is_complex else 1) * p["rank"]  # reals stored per output row (A) / column (B)
                lowrank = (_pad8(per * self.m) + _pad8(per * self.lr_width)) * p["lr_bits"] + 16 * 2 * p["rank"]
        odc = 16 * ((self.n if p["col_scales"] else 0) + (self.m if p["row_scales"] else 0))
        return {"lowrank": lowrank, "codes": codes, "scales": scales, "odc": odc}


@register_format
class FourierLinear(CompressedLinear):
    format = "fourier"

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, transform: str = "rfft2",
                 rank: int = 0, lr_bits: int = 16, codes: bool = True, quantizer: str = "polar", mag_bits: int = 3,
                 phase_bits: int = 3, real_bits: int = 3, group_size: int = 64, levels: str = "uniform",
                 col_scales: bool = False, row_scales: bool = False):
        super().__init__(in_features, out_features, bias)
        self._params = {"transform": str(transform), "rank": int(rank), "lr_bits": int(lr_bits), "codes": bool(codes),
                        "quantizer": str(quantizer), "mag_bits": int(mag_bits), "phase_bits": int(phase_bits),
                        "real_bits": int(real_bits), "group_size": int(group_size), "levels": str(levels),
                        "col_scales": bool(col_scales), "row_scales": bool(row_scales)}
        _validate(self._params)
        self.layout = Layout(out_features, in_features, self._params)
        for name, (shape, dtype) in self.layout.buffers().items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        self.forward_mode = "cached"

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    # --- groups, scales ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._params["transform"]

    def _device(self) -> torch.device:
        return next(iter(self.buffers())).device if len(self._buffers) else torch.device("cpu")

    def entry_groups(self) -> tuple[Groups, Groups]:
        """Group ids of the complex and real entries (built from the masks, row-major order)."""
        m, n, g, dev = self.out_features, self.in_features, self._params["group_size"], self._device()
        cmask, rmask = ft.stored_masks(m, n, self.mode, dev)
        gc = row_groups(cmask.nonzero()[:, 0], g)
        if self.layout.real_row_aligned:
            gr = row_groups(rmask.nonzero()[:, 0], g)
        else:
            gr = flat_groups(int(rmask.sum()), g, dev)
        return gc, gr

    def odc_scales(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        c = from_bits(self.odc_cols) if self._params["col_scales"] else None
        r = from_bits(self.odc_rows) if self._params["row_scales"] else None
        return c, r

    def set_odc(self, cols: torch.Tensor | None, rows: torch.Tensor | None) -> None:
        if self._params["col_scales"]:
            self.odc_cols = to_bits(cols)
        if self._params["row_scales"]:
            self.odc_rows = to_bits(rows)

    def scale_weight(self, W: torch.Tensor) -> torch.Tensor:
        """W_s = diag(r) W diag(c): the matrix the spectrum is taken of (ODC before the transform)."""
        c, r = self.odc_scales()
        W = W.float()
        if c is not None:
            W = W * c[None, :]
        if r is not None:
            W = W * r[:, None]
        return W

    # --- encode (used by the method) ----------------------------------------------------------------
    def set_codes(self, target: torch.Tensor, search: bool = False) -> None:
        """Quantize the stored entries of the grid `target` (its projection) into the code buffers
        (`search`: per-group clipping search of the scales, see quantizers/polar.py)."""
        p = self._params
        vc, vr = ft.gather(target, self.in_features, self.mode)
        gc, gr = self.entry_groups()
        if self.layout.n_complex:
            if p["quantizer"] == "polar":
                q = polar_quantize(vc, gc, p["mag_bits"], p["phase_bits"], p["levels"], search)
                self.mag_codes, self.phase_codes = pack(q.mag, p["mag_bits"]), pack(q.phase, p["phase_bits"])
                self.mag_scales = to_bits(q.scale)
                if p["levels"] == "lloyd":
                    self.mag_levels = to_bits(q.levels)
            else:
                b = self.layout.cart_bits
                re, im, step = cartesian_quantize(vc, gc, b, search)
                self.re_codes, self.im_codes, self.cplx_scales = pack(re, b), pack(im, b), to_bits(step)
        if self.layout.n_real:
            codes, step = sym_quantize(vr, gr, p["real_bits"], search)
            self.real_codes, self.real_scales = pack(codes, p["real_bits"]), to_bits(step)

    def set_lowrank(self, A: torch.Tensor, B: torch.Tensor, search: bool = False) -> None:
        """Store factors A (rank, m), B (rank, h) (complex; real for `none`)."""
        for name, T in (("lr_a", A), ("lr_b", B)):
            vals = torch.view_as_real(T.to(torch.complex64)) if self.layout.is_complex else T.float()
            bits = self._params["lr_bits"]
            if bits == 16:
                setattr(self, name, to_bits(vals))
                continue
            rank = vals.shape[0]
            flat = vals.reshape(-1)
            groups = flat_groups(flat.numel(), flat.numel() // rank, flat.device)  # one scale per component
            codes, step = sym_quantize(flat, groups, bits, search)
            setattr(self, name, pack(codes, bits))
            setattr(self, f"{name}_scales", to_bits(step))

    # --- decode ------------------------------------------------------------------------------------
    def code_values(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Dequantized (complex, real) stored entries, or (None, None) without codes."""
        p, lay = self._params, self.layout
        if not p["codes"]:
            return None, None
        gc, gr = self.entry_groups()
        vc = vr = None
        if lay.n_complex:
            if p["quantizer"] == "polar":
                mag = unpack(self.mag_codes, p["mag_bits"], lay.n_complex)
                ph = unpack(self.phase_codes, p["phase_bits"], lay.n_complex)
                lv = from_bits(self.mag_levels) if p["levels"] == "lloyd" else uniform_levels(p["mag_bits"], mag.device)
                vc = polar_dequantize(mag, ph, from_bits(self.mag_scales), lv, gc, p["phase_bits"])
            else:
                b = lay.cart_bits
                re, im = unpack(self.re_codes, b, lay.n_complex), unpack(self.im_codes, b, lay.n_complex)
                vc = cartesian_dequantize(re, im, from_bits(self.cplx_scales), gc, b)
        if lay.n_real:
            codes = unpack(self.real_codes, p["real_bits"], lay.n_real)
            vr = sym_dequantize(codes, from_bits(self.real_scales), gr, p["real_bits"])
        return vc, vr

    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Dequantized A (rank, m), B (rank, h), or None at rank 0."""
        r, bits, lay = self._params["rank"], self._params["lr_bits"], self.layout
        if not r:
            return None
        out = []
        for name, width in (("lr_a", self.out_features), ("lr_b", lay.lr_width)):
            if bits == 16:
                vals = from_bits(getattr(self, name))
            else:
                count = r * width * (2 if lay.is_complex else 1)
                groups = flat_groups(count, count // r, self._device())
                codes = unpack(getattr(self, name), bits, count)
                vals = sym_dequantize(codes, from_bits(getattr(self, f"{name}_scales")), groups, bits)
                vals = vals.reshape((r, width, 2) if lay.is_complex else (r, width))
            out.append(torch.view_as_complex(vals.contiguous()) if lay.is_complex else vals)
        return out[0], out[1]

    def codes_grid(self) -> torch.Tensor | None:
        """The grid of the quantized residual Q (a valid spectrum), or None without codes."""
        vc, vr = self.code_values()
        if vc is None and vr is None:
            return None
        return ft.fill(vc, vr, self.out_features, self.in_features, self.mode)

    def lowrank_grid(self) -> torch.Tensor | None:
        f = self.lowrank_factors()
        return None if f is None else f[0].T @ f[1]

    def reconstruct_scaled(self) -> torch.Tensor:
        """W_s = inverse(L + Q): the weight before the ODC scales are undone (float32)."""
        m, n = self.out_features, self.in_features
        grid = None
        for part in (self.codes_grid(), self.lowrank_grid()):
            if part is not None:
                grid = part if grid is None else grid + part
        if grid is None:
            return torch.zeros(m, n, device=self._device())
        return ft.inverse(grid, n, self.mode)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        W = self.reconstruct_scaled()
        c, r = self.odc_scales()
        if c is not None:
            W = W / c[None, :]
        if r is not None:
            W = W / r[:, None]
        return W.to(dtype)

    def bits_breakdown(self) -> dict[str, int]:
        """Where the stored bits go: lowrank (factors and their scales), codes, scales (group scales
        and magnitude levels), odc. Counted from the stored buffers; sums to storage_bits()."""
        out = {"lowrank": 0, "codes": 0, "scales": 0, "odc": 0}
        for name, t in self.stored_tensors().items():
            key = ("lowrank" if name.startswith("lr_") else "odc" if name.startswith("odc_")
                   else "codes" if name.endswith("_codes") else "scales")
            out[key] += t.numel() * t.element_size() * 8
        return out

    # --- forward -----------------------------------------------------------------------------------
    forward_modes = ("cached", "dequant", "spectral")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward_mode == "spectral":
            return self.spectral_forward(x)
        return super().forward(x)  # "cached" or "dequant"

    def spectral_forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T computed from the compressed form, never forming W (see the module docstring)."""
        m, n, mode = self.out_features, self.in_features, self.mode
        c, r = self.odc_scales()
        xs = x.float()
        if c is not None:
            xs = xs / c
        if mode == "rfft_out":
            # W = irfft(G) along the outputs, so x W^T = irfft(x G^T): one matmul, one inverse FFT.
            y = torch.fft.irfft(xs.to(torch.complex64) @ self.codes_grid().T, n=m, dim=-1, norm="ortho")
            return self._finish(y, r, x.dtype)
        if mode in ("rfft2", "rfft"):
            X = torch.fft.rfft(xs, dim=-1, norm="ortho").conj()
        elif mode == "fft2":
            X = torch.fft.fft(xs, dim=-1, norm="ortho").conj()
        else:
            X = xs
        Z = None
        vc, vr = self.code_values()
        if vc is not None or vr is not None:
            Qw = ft.fill(vc, vr, m, n, mode, weighted=True)
            Z = X @ Qw.T
        f = self.lowrank_factors()
        if f is not None:
            A, B = f
            Bw = B * ft.column_weights(m, n, mode, B.device)
            ZL = (X @ Bw.T) @ A
            Z = ZL if Z is None else Z + ZL
        if Z is None:
            Z = torch.zeros(*x.shape[:-1], m, device=x.device)
        if mode in ("rfft2", "fft2"):
            Z = torch.fft.ifft(Z, dim=-1, norm="ortho")
        return self._finish(Z.real if Z.is_complex() else Z, r, x.dtype)

    def _finish(self, y: torch.Tensor, r: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Undo the ODC row scales, add the bias."""
        if r is not None:
            y = y / r
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(dtype)



def _validate(p: dict[str, Any]) -> None:
    """Reject parameters no `fourier` layer can have (the loader turns this into a CheckpointError)."""
    if p["transform"] not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {p['transform']!r}")
    if p["quantizer"] not in QUANTIZERS or p["levels"] not in LEVELS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS} and levels one of {LEVELS}")
    for key in ("mag_bits", "phase_bits", "real_bits"):
        if not 1 <= p[key] <= 8:
            raise ValueError(f"{key} must be from 1 to 8, got {p[key]}")
    if p["lr_bits"] not in LR_BITS or p["rank"] < 0:
        raise ValueError(f"lr_bits must be one of {LR_BITS} and rank >= 0")
    if p["group_size"] != -1 and p["group_size"] <= 0:
        raise ValueError(f"group_size must be positive or -1, got {p['group_size']}")
    if p["quantizer"] == "cartesian" and (p["mag_bits"] + p["phase_bits"]) % 2:
        raise ValueError("cartesian codes split mag_bits + phase_bits evenly between real and imaginary parts; "
                         "their sum must be even")


__all__ = ["FourierLinear", "Layout"]
