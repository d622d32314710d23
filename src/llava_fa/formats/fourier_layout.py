"""What a `fourier` layer stores, from its shape and parameters alone: buffer shapes, bit counts,
entry groups, the checks on its parameters, and the unpacked codes the buffers are packed from.

See formats/fourier.py for the weight it represents and the meaning of each buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from llava_fa.quantizers.float16 import to_bits
from llava_fa.quantizers.packing import pack, packed_width
from llava_fa.quantizers.polar import Groups, flat_groups, flat_groups_count, row_groups, row_groups_count
from llava_fa.transforms import fourier as ft

TRANSFORMS = ft.MODES
QUANTIZERS = ("polar", "cartesian")
LEVELS = ("uniform", "lloyd")
LR_BITS = (16, 8, 4)


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


# The row-block paths (rfft, none: each row of W is the inverse of its grid row alone) rebuild W about
# this many entries at a time (4 MiB of float32), in balanced blocks of at least MIN_BLOCK_ROWS rows:
# the dequant forward and the weight error then hold one block, not the whole weight and its grids.
ROW_BLOCK_ELEMENTS = 1 << 20
MIN_BLOCK_ROWS = 64


@dataclass
class SpectrumCodes:
    """Codes chosen for the stored entries of a `fourier` layer, unpacked.

    Each field fills the buffer of the same name: codes are int vectors in row-major order of the
    grid's complex (or real) entries, scales one float value per group (float16-representable:
    chosen after rounding), levels the 2^b_r magnitude levels in [0, 1]. Only the fields of the
    layer's quantizer are needed: polar (mag_*, phase_codes) or cartesian (re/im_codes,
    cplx_scales), and real_* where the grid has real entries.
    """

    mag_codes: torch.Tensor | None = None
    phase_codes: torch.Tensor | None = None
    mag_scales: torch.Tensor | None = None
    mag_levels: torch.Tensor | None = None  # stored with lloyd levels only
    re_codes: torch.Tensor | None = None
    im_codes: torch.Tensor | None = None
    cplx_scales: torch.Tensor | None = None
    real_codes: torch.Tensor | None = None
    real_scales: torch.Tensor | None = None


CODE_FIELDS = tuple(f.name for f in fields(SpectrumCodes))


@dataclass
class RowSpan:
    """The stored entries of grid rows start..stop: complex entries c0..c1 and real entries r0..r1 of
    the row-major code streams, their groups (ids counted from the span's first group) and the index
    of that first group in the scale vectors (gc0, gr0)."""

    c0: int
    c1: int
    r0: int
    r1: int
    gc: Groups
    gr: Groups
    gc0: int
    gr0: int


class Layout:
    """Counts of a `fourier` layer, from its shape and parameters alone (no tensors)."""

    def __init__(self, m: int, n: int, p: dict[str, Any]):
        self.m, self.n, self.p = m, n, p
        mode = p["transform"]
        self.h = ft.spectrum_shape(m, n, mode)[1]
        cplx_rows, real_rows = ft.row_counts(m, n, mode)
        self.cplx_rows, self.real_rows = cplx_rows, real_rows  # stored entries per grid row
        self.n_complex, self.n_real = sum(cplx_rows), sum(real_rows)
        g = p["group_size"]
        self.complex_groups = row_groups_count(cplx_rows, g)
        self.real_row_aligned = mode in ("none", "rfft_out")  # real entries fill whole rows
        self.real_groups = (row_groups_count(real_rows, g) if self.real_row_aligned
                            else flat_groups_count(self.n_real, g))
        self.is_complex = mode != "none"
        self.lr_width = self.h if self.is_complex else n  # columns of B
        self.cart_bits = (p["mag_bits"] + p["phase_bits"]) // 2

    def entry_groups(self, device: torch.device | None = None) -> tuple[Groups, Groups]:
        """Group ids of the complex and real entries (built from the masks, row-major order)."""
        m, n, g, mode = self.m, self.n, self.p["group_size"], self.p["transform"]
        cmask, rmask = ft.stored_masks(m, n, mode, device)
        gc = row_groups(cmask.sum(1), g)
        if self.real_row_aligned:
            gr = row_groups(rmask.sum(1), g)
        else:
            gr = flat_groups(int(rmask.sum()), g, device)
        return gc, gr

    @property
    def rows_independent(self) -> bool:
        """Each row of W is the inverse of its grid row alone (rfft, none): W can be rebuilt in row blocks."""
        return self.p["transform"] in ("rfft", "none")

    def row_blocks(self) -> list[tuple[int, int]]:
        """Row ranges of W rebuilt at a time (one, the whole weight, unless rows are independent)."""
        m = self.m
        k = max(1, min(-(-m * self.n // ROW_BLOCK_ELEMENTS), m // MIN_BLOCK_ROWS)) if self.rows_independent else 1
        return [(m * i // k, m * (i + 1) // k) for i in range(k)]

    def row_span(self, start: int, stop: int, device: torch.device | None = None) -> RowSpan:
        """The entries and groups of grid rows start..stop (the same ids, less the offset, as entry_groups)."""
        g, cplx, real = self.p["group_size"], self.cplx_rows, self.real_rows
        c0, c1, r0, r1 = sum(cplx[:start]), sum(cplx[:stop]), sum(real[:start]), sum(real[:stop])
        gc = row_groups(torch.tensor(cplx[start:stop], device=device), g)
        if self.real_row_aligned:
            gr, gr0 = row_groups(torch.tensor(real[start:stop], device=device), g), row_groups_count(real[:start], g)
        else:  # flat groups across rows, as flat_groups numbers them
            size = max(self.n_real, 1) if g == -1 else g
            gr0 = r0 // size
            ids = torch.arange(r0, r1, device=device) // size - gr0
            gr = Groups(ids, int(ids[-1]) + 1 if r1 > r0 else 0)
        return RowSpan(c0, c1, r0, r1, gc, gr, row_groups_count(cplx[:start], g), gr0)

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

    def code_bits(self, name: str) -> int:
        """Bits per code of the code buffer `name`."""
        return {"mag_codes": self.p["mag_bits"], "phase_codes": self.p["phase_bits"], "re_codes": self.cart_bits,
                "im_codes": self.cart_bits, "real_codes": self.p["real_bits"]}[name]

    def pack_codes(self, codes: SpectrumCodes) -> dict[str, torch.Tensor]:
        """The stored code and scale buffers of `codes`: codes packed, scales as float16 bits."""
        out = {}
        for name, (shape, dtype) in self.buffers().items():
            if name not in CODE_FIELDS:
                continue
            value = getattr(codes, name)
            if value is None:
                raise ValueError(f"fourier: the codes lack {name}, which this layer stores")
            flat = value.reshape(-1)
            out[name] = pack(flat, self.code_bits(name)) if dtype == torch.uint8 else to_bits(flat)
            if tuple(out[name].shape) != shape:
                raise ValueError(f"fourier: {name} packs to {tuple(out[name].shape)}, the layer stores {shape}")
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
        codes = lowrank = scales = 0
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


def validate_params(p: dict[str, Any]) -> None:
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
