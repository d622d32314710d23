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

Encoding: `set_codes` quantizes a target grid, `from_codes` builds a layer of codes a method chose
itself (fa-gptq); both store through `store_codes` (the buffers' shapes: formats/fourier_layout.py).

Forward passes (attribute `forward_mode`, a runtime choice, not stored; the format's backends table):
- "auto" (default: "dequant" on CUDA, "cached" on CPU), "cached" and "dequant": as for every format
  (formats/base.py); "cached" rebuilds the
  dense weight once per device/dtype and keeps it as a plain attribute
  (not in the state_dict; dropped on load_state_dict and on .to()).
- "spectral" (`spectral_forward`): never forms W. With X = rfft(x / c) (fft for fft2), y = Re(ifft_m(conj(X) Q_w^T +
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

from llava_fa.formats import fourier_runtime as runtime
from llava_fa.formats.base import Backend, CompressedLinear
from llava_fa.formats.fourier_layout import (LEVELS, LR_BITS, QUANTIZERS, TRANSFORMS, Layout, SpectrumCodes,
                                             validate_params)
from llava_fa.formats.registry import register_format
from llava_fa.quantizers.float16 import from_bits, to_bits
from llava_fa.quantizers.packing import pack, unpack, unpack_range
from llava_fa.quantizers.polar import (
    Groups,
    cartesian_dequantize,
    cartesian_quantize,
    flat_groups,
    polar_dequantize,
    polar_quantize,
    sym_dequantize,
    sym_quantize,
    uniform_levels,
)
from llava_fa.transforms import fourier as ft


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
        validate_params(self._params)
        self.layout = Layout(out_features, in_features, self._params)
        for name, (shape, dtype) in self.layout.buffers().items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    # --- the codes while the fused kernel's layout holds them (formats/fourier_runtime.py) ----------
    def drop_runtime_caches(self) -> None:
        runtime.restore_codes(self)  # the layout may hold the only copy of the codes
        super().drop_runtime_caches()

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        out = super().stored_tensors()
        rt = runtime.moved_codes(self)
        return out if rt is None else {**out, **runtime.stored_codes(self, rt)}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        rt = runtime.moved_codes(self)
        if rt is not None:  # saved as stored, whatever runs
            destination.update({prefix + k: v for k, v in runtime.stored_codes(self, rt).items()})

    # --- groups, scales ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._params["transform"]

    def _device(self) -> torch.device:
        return next(iter(self.buffers())).device if len(self._buffers) else torch.device("cpu")

    def entry_groups(self) -> tuple[Groups, Groups]:
        """Group ids of the complex and real entries (built from the masks, row-major order)."""
        return self.layout.entry_groups(self._device())

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

    # --- encode (used by the methods) -------------------------------------------------------------
    @classmethod
    def from_codes(cls, out_features: int, in_features: int, params: dict[str, Any], codes: SpectrumCodes,
                   bias: torch.Tensor | None = None) -> "FourierLinear":
        """A layer of already chosen codes (its low-rank and ODC buffers, if any, stay to be set)."""
        chosen = [t for t in vars(codes).values() if t is not None]
        layer = cls(in_features, out_features, bias is not None, **params)
        layer = layer.to(chosen[0].device) if chosen else layer
        layer.store_codes(codes)
        return layer.set_bias(bias)

    def store_codes(self, codes: SpectrumCodes) -> None:
        """Pack `codes` into the code and scale buffers (the one path every encoder stores through)."""
        for name, tensor in self.layout.pack_codes(codes).items():
            setattr(self, name, tensor)

    def set_codes(self, target: torch.Tensor, search: bool = False) -> None:
        """Quantize the stored entries of the grid `target` (its projection) into the code buffers
        (`search`: per-group clipping search of the scales, see quantizers/polar.py)."""
        p, lay, codes = self._params, self.layout, SpectrumCodes()
        vc, vr = ft.gather(target, self.in_features, self.mode)
        gc, gr = self.entry_groups()
        # codes kept as uint8 (they have at most 8 bits; pack gives the same bytes) and the entry-sized
        # inputs dropped as soon as they are used: int64 codes and complex entries are 8 bytes each
        if lay.n_complex and p["quantizer"] == "polar":
            q = polar_quantize(vc, gc, p["mag_bits"], p["phase_bits"], p["levels"], search)
            codes.mag_codes, codes.phase_codes = q.mag.to(torch.uint8), q.phase.to(torch.uint8)
            codes.mag_scales, codes.mag_levels, q = q.scale, q.levels, None
        elif lay.n_complex:
            re, im, codes.cplx_scales = cartesian_quantize(vc, gc, lay.cart_bits, search)
            codes.re_codes, codes.im_codes, re, im = re.to(torch.uint8), im.to(torch.uint8), None, None
        vc = gc = None
        if lay.n_real:
            real, codes.real_scales = sym_quantize(vr, gr, p["real_bits"], search)
            codes.real_codes = real.to(torch.uint8)
        self.store_codes(codes)

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
        return self.code_values_rows(0, ft.spectrum_shape(self.out_features, self.in_features, self.mode)[0])

    def code_values_rows(self, start: int, stop: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Dequantized (complex, real) stored entries of grid rows start..stop, or (None, None) without
        codes: only the codes of those rows are unpacked (the same values as those rows' part of all)."""
        p, lay = self._params, self.layout
        if not p["codes"]:
            return None, None
        if runtime.moved_codes(self) is not None:
            self.drop_runtime_caches()  # takes the codes back from the kernel layout holding them
        s = lay.row_span(start, stop, self._device())
        vc = vr = None
        if lay.n_complex:
            polar = p["quantizer"] == "polar"
            scale = from_bits(self.mag_scales if polar else self.cplx_scales)[s.gc0:s.gc0 + s.gc.count]
            if polar:
                lv = (from_bits(self.mag_levels) if p["levels"] == "lloyd"
                      else uniform_levels(p["mag_bits"], self.mag_codes.device))
                # codes unpacked inline: polar_dequantize frees each entry-sized code tensor once used
                vc = polar_dequantize(unpack_range(self.mag_codes, p["mag_bits"], s.c0, s.c1),
                                      unpack_range(self.phase_codes, p["phase_bits"], s.c0, s.c1), scale, lv,
                                      s.gc, p["phase_bits"])
            else:
                b = lay.cart_bits
                re, im = (unpack_range(t, b, s.c0, s.c1) for t in (self.re_codes, self.im_codes))
                vc = cartesian_dequantize(re, im, scale, s.gc, b)
        if lay.n_real:
            vr = sym_dequantize(unpack_range(self.real_codes, p["real_bits"], s.r0, s.r1),
                                from_bits(self.real_scales)[s.gr0:s.gr0 + s.gr.count], s.gr, p["real_bits"])
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
        return self._assemble(self.weight_rows(scaled=True))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._assemble(self.weight_rows(dtype))

    def weight_rows(self, dtype: torch.dtype = torch.float32, scaled: bool = False):
        """(start, stop, rows start..stop of W) (formats/base.py): on CPU, for rfft and none, in the blocks
        of layout.row_blocks(), each rebuilt from its grid rows alone (the same floats as those rows of
        the whole inverse); else one block (on GPU speed comes first). `scaled`: rows of W_s (float32,
        ODC scales not undone)."""
        m, whole = self.out_features, not self.layout.rows_independent
        blocks = [(0, m)] if whole or self._device().type != "cpu" else self.layout.row_blocks()
        L = self.lowrank_grid()  # whole: row blocks of the product A^T B need not be the same floats (GEMM)
        for a, b in blocks:
            W = self._scaled_rows(a, b, L, whole)
            yield a, b, W if scaled else self._unscale(W, a, b).to(dtype)

    def _scaled_rows(self, a: int, b: int, L: torch.Tensor | None, whole: bool = False) -> torch.Tensor:
        """Rows a..b of W_s from grid rows a..b (`whole`: a..b = 0..m of any transform, from the whole grid)."""
        vc, vr = self.code_values() if whole else self.code_values_rows(a, b)
        grid = None if vc is None and vr is None else ft.fill(vc, vr, b - a, self.in_features, self.mode)
        vc = vr = None
        if L is not None:
            grid = L[a:b] if grid is None else grid + L[a:b]
        if grid is None:
            return torch.zeros(b - a, self.in_features, device=self._device())
        return ft.inverse(grid, self.in_features, self.mode)

    def _unscale(self, W: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """Rows a..b of W from those of W_s: the ODC scales undone."""
        c, r = self.odc_scales()
        if c is not None:
            W = W / c[None, :]
        if r is not None:
            W = W / r[a:b, None]
        return W

    def _assemble(self, blocks) -> torch.Tensor:
        """The whole weight from weight_rows' blocks, written into one tensor as they come."""
        out = None
        for a, b, W in blocks:
            if (a, b) == (0, self.out_features):
                return W
            if out is None:
                out = torch.empty(self.out_features, self.in_features, dtype=W.dtype, device=W.device)
            out[a:b] = W
        return out

    def bits_breakdown(self) -> dict[str, int]:
        """Where the stored bits go: lowrank (factors and their scales), codes, scales (group scales
        and magnitude levels), odc. Counted from the stored buffers; sums to storage_bits()."""
        out = {"lowrank": 0, "codes": 0, "scales": 0, "odc": 0}
        for name, t in self.stored_tensors().items():
            key = ("lowrank" if name.startswith("lr_") else "odc" if name.startswith("odc_")
                   else "codes" if name.endswith("_codes") else "scales")
            out[key] += t.numel() * t.element_size() * 8
        return out


def spectral_forward(layer: FourierLinear, x: torch.Tensor) -> torch.Tensor:
    """y = x W^T computed from the compressed form, never forming W (see the module docstring)."""
    m, n, mode = layer.out_features, layer.in_features, layer.mode
    c, r = layer.odc_scales()
    xs = x.float()
    if c is not None:
        xs = xs / c
    if mode == "rfft_out":
        # W = irfft(G) along the outputs, so x W^T = irfft(x G^T): one matmul, one inverse FFT.
        y = torch.fft.irfft(xs.to(torch.complex64) @ layer.codes_grid().T, n=m, dim=-1, norm="ortho")
        return _finish(layer, y, r, x.dtype)
    if mode in ("rfft2", "rfft"):
        X = torch.fft.rfft(xs, dim=-1, norm="ortho").conj()
    elif mode == "fft2":
        X = torch.fft.fft(xs, dim=-1, norm="ortho").conj()
    else:
        X = xs
    Z = None
    vc, vr = layer.code_values()
    if vc is not None or vr is not None:
        Qw = ft.fill(vc, vr, m, n, mode, weighted=True)
        Z = X @ Qw.T
    f = layer.lowrank_factors()
    if f is not None:
        A, B = f
        Bw = B * ft.column_weights(m, n, mode, B.device)
        ZL = (X @ Bw.T) @ A
        Z = ZL if Z is None else Z + ZL
    if Z is None:
        Z = torch.zeros(*x.shape[:-1], m, device=x.device)
    if mode in ("rfft2", "fft2"):
        Z = torch.fft.ifft(Z, dim=-1, norm="ortho")
    return _finish(layer, Z.real if Z.is_complex() else Z, r, x.dtype)


def _finish(layer: FourierLinear, y: torch.Tensor, r: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Undo the ODC row scales, add the bias."""
    if r is not None:
        y = y / r
    if layer.bias is not None:
        y = y + layer.bias.float()
    return y.to(dtype)


# "fused": the Triton kernel on the codes (formats/fourier_runtime.py), else the spectral reference
# path, which keeps the same memory promise; "auto" puts the kernel first on CUDA.
FourierLinear.backends = {
    **CompressedLinear.backends, "spectral": (Backend(spectral_forward),),
    "fused": (Backend(runtime.fused_forward, runtime.runs), Backend(spectral_forward)),
    "auto": (Backend(runtime.fused_forward, runtime.runs_by_default), *CompressedLinear.backends["auto"])}

__all__ = ["FourierLinear", "Layout", "SpectrumCodes", "LEVELS", "LR_BITS", "QUANTIZERS", "TRANSFORMS"]
