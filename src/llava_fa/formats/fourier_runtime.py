"""The `fused` backend of the `fourier` format: one stored layer converted to the layout of the
Triton kernel (kernels/fourier_matmul.py) once per device, then y = x W^T from the codes.

What runs per call: x / c (ODC columns), one rfft of the activation (cuFFT), the kernel, the
low-rank term as two rank-r products when the layer has one, for `rfft2` one inverse FFT along the
outputs, then / r (ODC rows) and the bias. The conversion keeps codes at one byte per complex entry
(both codes of an entry together: 4 bits per weight at run time for any b_r + b_theta <= 8), the
group scales in float32 and the two self-conjugate columns as dense values; nothing of size m x n
is kept. The layout lives in the layer's `_kernel` dict (not in the state_dict; dropped on .to()
and load_state_dict by CompressedLinear).

Runs: PolarQuant codes (uniform or Lloyd levels), transforms `rfft` and `rfft2`, any group size,
rank and ODC scales. Others (cartesian codes, `fft2`, `rfft_out`, `none`) keep their other backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava_fa.kernels import fourier_matmul as kernel
from llava_fa.quantizers.float16 import from_bits
from llava_fa.quantizers.packing import unpack
from llava_fa.quantizers.polar import phase_values, uniform_levels
from llava_fa.transforms import fourier as ft

_ONE_GROUP = 1 << 30  # group_size -1: one group per row, which no entry index reaches


@dataclass
class KernelLayout:
    codes: torch.Tensor  # uint8 (k_pad, m): mag | phase << mag_bits of the entries between DC and Nyquist
    tables: torch.Tensor  # int32 (2^(b_r + b_theta),): float16 pairs (2 level cos, 2 level sin) per byte code
    mag_bits: int
    phase_bits: int
    scales: torch.Tensor  # float32 (n_groups,)
    group_start: torch.Tensor  # int32 (m,): group of each row's first stored complex entry
    group_offset: torch.Tensor  # int32 (m,): stored complex entries of the row before column 1
    edges: torch.Tensor  # float32 (m, E, 2): weighted self-conjugate columns (re, im)
    edge_cols: tuple[int, ...]
    k_reg: int  # entries per row in `codes` (columns 1 .. h - 1 minus Nyquist)
    group: int
    aligned: bool  # every row's groups start at its first entry (rfft)
    complex_out: bool  # rfft2: the kernel returns Z, an inverse FFT along the outputs follows
    lowrank: tuple[torch.Tensor, torch.Tensor] | None  # (A (r, m), B weighted (r, h)) complex64
    cols: torch.Tensor | None  # ODC column scales (n,)
    rows: torch.Tensor | None  # ODC row scales (m,)

    def nbytes(self) -> int:
        tensors = [self.codes, self.tables, self.scales, self.group_start, self.group_offset, self.edges,
                   *(self.lowrank or ()), *(t for t in (self.cols, self.rows) if t is not None)]
        return sum(t.numel() * t.element_size() for t in tensors)


def supported(layer) -> bool:
    p = layer.params()
    return (p["codes"] and p["quantizer"] == "polar" and p["transform"] in ("rfft", "rfft2")
            and p["mag_bits"] + p["phase_bits"] <= 8 and layer.layout.n_complex > 0)


def _tables(layer, device: torch.device) -> torch.Tensor:
    """For every byte code (mag | phase << b_r) the pair (2 level cos theta, 2 level sin theta) in float16
    (2: the Parseval weight of a complex entry): one lookup of two adjacent values per entry, at most
    1 KiB (8 bits). The levels are float16 values already; the products round to 5e-4, below the
    bf16 dot's rounding."""
    p = layer.params()
    levels = from_bits(layer.mag_levels).float() if p["levels"] == "lloyd" else uniform_levels(p["mag_bits"], device)
    theta = phase_values(torch.arange(1 << p["phase_bits"], device=device), p["phase_bits"])
    rho = 2 * levels.to(device).double()[None, :]  # (1, 2^b_r): the low bits of the code
    pairs = torch.stack([rho * torch.cos(theta.double())[:, None], rho * torch.sin(theta.double())[:, None]], -1)
    # row = phase * 2^b_r + mag = the byte code; each pair one int32 word (re in the low half)
    return pairs.reshape(-1, 2).half().contiguous().view(torch.int32).reshape(-1)


def _code_grid(layer, cmask: torch.Tensor) -> torch.Tensor:
    p, n_c = layer.params(), layer.layout.n_complex
    mag = unpack(layer.mag_codes, p["mag_bits"], n_c).to(torch.int32)
    phase = unpack(layer.phase_codes, p["phase_bits"], n_c).to(torch.int32)
    grid = torch.zeros(cmask.shape, dtype=torch.int32, device=cmask.device)
    grid[cmask] = mag | (phase << p["mag_bits"])
    return grid


def _edge_values(layer, cmask: torch.Tensor, rmask: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """The stored entries of the self-conjugate columns times their Parseval weight, (m, E, 2) float32 (re, im):
    taken from the stored entries in their row-major order, without filling the whole m x h grid."""
    vc, vr = layer.code_values()
    wc, wr = ft.entry_weights(layer.mode)
    in_edge = torch.zeros_like(cmask)
    in_edge[:, cols] = True
    out = torch.zeros(cmask.shape[0], len(cols), dtype=torch.complex64, device=cmask.device)
    if vc is not None:
        out[cmask[:, cols]] = vc[in_edge[cmask]].to(torch.complex64) * wc
    if vr is not None and vr.numel():
        out[rmask[:, cols]] = vr[in_edge[rmask]].to(torch.complex64) * wr
    return torch.view_as_real(out).float().contiguous()


def build(layer, device: torch.device) -> KernelLayout:
    """The kernel layout of `layer` (its buffers must be on `device`)."""
    p, m, n, mode = layer.params(), layer.out_features, layer.in_features, layer.mode
    cmask, rmask = ft.stored_masks(m, n, mode, device)
    edge_cols = tuple(ft.self_conjugate_columns(n, mode))
    h = cmask.shape[1]
    k_reg = h - len(edge_cols)
    k_pad = -(-k_reg // 16) * 16
    codes = torch.zeros(k_pad, m, dtype=torch.uint8, device=device)  # output rows contiguous (the kernel's docstring)
    codes[:k_reg] = _code_grid(layer, cmask)[:, 1:1 + k_reg].T.to(torch.uint8)
    gc, _ = layer.entry_groups()
    gid = torch.zeros(cmask.shape, dtype=torch.int64, device=device)
    gid[cmask] = gc.gid
    offset = cmask[:, 0].to(torch.int32)  # rfft2 rows whose DC entry is complex: it comes first
    start = torch.where(offset.bool(), gid[:, 0], gid[:, 1]).to(torch.int32)
    edges = _edge_values(layer, cmask, rmask, list(edge_cols))
    factors = layer.lowrank_factors()
    lowrank = None
    if factors is not None:
        A, B = factors
        lowrank = (A.to(torch.complex64), (B * ft.column_weights(m, n, mode, device)).to(torch.complex64))
    cols, rows = layer.odc_scales()
    group = _ONE_GROUP if p["group_size"] == -1 else p["group_size"]
    return KernelLayout(codes, _tables(layer, device), p["mag_bits"], p["phase_bits"],
                        from_bits(layer.mag_scales).float().contiguous(), start, offset, edges, edge_cols, k_reg, group,
                        not bool(offset.any()), mode == "rfft2", lowrank,
                        None if cols is None else cols.float(), None if rows is None else rows.float())


def kernel_layout(layer, device: torch.device) -> KernelLayout:
    cache = layer.__dict__.setdefault("_kernel", {})
    if device not in cache:
        cache.clear()  # one device at a time
        cache[device] = build(layer, device)
    return cache[device]


def fused_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """y = x W^T + b from the codes: the activation's spectrum times the code tiles (module docstring)."""
    rt = kernel_layout(layer, x.device)
    lead, n = x.shape[:-1], x.shape[-1]
    xs = x.reshape(-1, n).float()
    if rt.cols is not None:
        xs = xs / rt.cols
    spec = torch.fft.rfft(xs, dim=-1, norm="ortho")
    z = kernel.fourier_matmul(spec, rt, x.dtype)
    if rt.complex_out:
        z = torch.view_as_complex(z)
    if rt.lowrank is not None:
        A, Bw = rt.lowrank
        low = (spec.conj() @ Bw.T) @ A
        z = z + (low if rt.complex_out else low.real)
    y = torch.fft.ifft(z, dim=-1, norm="ortho").real if rt.complex_out else z
    if rt.rows is not None:
        y = y / rt.rows
    if layer.bias is not None:
        y = y + layer.bias.float()
    return y.to(x.dtype).reshape(*lead, layer.out_features)


def runs(layer, x: torch.Tensor) -> bool:
    """`fused`: wherever Triton runs and the layer's form is supported."""
    return kernel.available(x) and supported(layer)


def runs_by_default(layer, x: torch.Tensor) -> bool:
    """`auto`: float16/bfloat16 activations only (float32 ones would go through a TF32 dot)."""
    return x.dtype in (torch.float16, torch.bfloat16) and runs(layer, x)
