"""The `fused` backend of the `fourier` format: one stored layer converted to the layout of the
Triton kernel (kernels/fourier_matmul.py) once per device, then y = x W^T from the codes. Three kernels
read that layout: one activation row of an rfft layer runs the CUDA C++ gemv (kernels/fourier_gemv.cu,
epilogue included), 17 rows or more one GEMM on the spectrum decoded per call (kernels/fourier_dense.py),
the rest fourier_matmul's Triton tiles (`SWITCHES` below).

What runs per call: x / (c sqrt(n)) (ODC columns and the transform's orthonormal factor, with the
cast to float32: one elementwise kernel), one rfft of the activation (cuFFT), the kernel, the
low-rank term as two rank-r products when the layer has one, for `rfft2` one inverse FFT along the
outputs, then / r (ODC rows) and the bias. The conversion packs both codes of an entry into one code
of b_r + b_theta bits along the input axis (exactly the stored codes' size), shares the stored
float16 group scales and keeps the self-conjugate columns as dense values; nothing of size m x n is
kept. The layout then holds the only copy of the codes: the layer's `mag_codes` / `phase_codes`
buffers are emptied (`move_codes`) and rebuilt bit for bit from the layout whenever anything else
needs them (`restore_codes`: state_dict, dequantize, .to(), load_state_dict), so at run time a
compressed model takes its stored size plus small workspaces. The layout lives in the layer's
`_kernel` dict (not in the state_dict).

Runs: PolarQuant codes (uniform or Lloyd levels), transforms `rfft` and `rfft2`, any group size,
rank and ODC scales. Others (cartesian codes, `fft2`, `rfft_out`, `none`) keep their other backends.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import torch

from llava_fa.errors import ConfigError
from llava_fa.kernels import fourier_dense as dense_kernel
from llava_fa.kernels import fourier_gemv_cuda as gemv_cuda
from llava_fa.kernels import fourier_matmul as kernel
from llava_fa.quantizers.float16 import from_bits
from llava_fa.quantizers.packing import pack, unpack
from llava_fa.quantizers.polar import phase_values, uniform_levels
from llava_fa.transforms import fourier as ft

_ONE_GROUP = 1 << 30  # group_size -1: one group per row, which no entry index reaches


@dataclass
class KernelLayout:
    codes: torch.Tensor  # uint8 (k_pad * bits / 8, m): codes packed along k (`pack_codes`), output rows contiguous
    bits: int  # b_r + b_theta: one code per complex entry, mag | phase << mag_bits
    tables: torch.Tensor  # int32 (2^bits,): float16 pairs (2 level cos, 2 level sin) per code
    scales: torch.Tensor  # float16 (n_groups,): a view of the stored group scales
    group_start: torch.Tensor  # int32 (m,): group of each row's first stored complex entry
    group_offset: torch.Tensor  # int32 (m,): stored complex entries of the row before column 1
    edges: torch.Tensor  # float32 (m, E, 2): weighted self-conjugate columns (re, im)
    edge_codes: torch.Tensor  # uint8 (m, E): their codes where complex (restore_codes rebuilds the stream)
    edge_cols: tuple[int, ...]
    k_reg: int  # entries per row in `codes` (columns 1 .. h - 1 minus Nyquist)
    group: int
    aligned: bool  # every row's groups start at its first entry (rfft)
    complex_out: bool  # rfft2: the kernel returns Z, an inverse FFT along the outputs follows
    lowrank: tuple[torch.Tensor, torch.Tensor] | None  # (A (r, m), B weighted (r, h)) complex64
    in_scale: torch.Tensor  # float32 (n,): the activation's divisor, ODC column scales (or 1) times sqrt(n)
    rows: torch.Tensor | None  # ODC row scales (m,)
    holds_codes: bool = False  # the layer's code buffers were moved here (move_codes)
    counters: torch.Tensor | None = None  # int32 per 128 rows: the CUDA gemv's split counters (zero between calls)
    in_scale_key: bytes = b""  # digest of in_scale's values: layers with equal keys share an activation's spectrum

    @property
    def entries(self) -> int:  # codes per packed word
        return word_shape(self.bits)[0]

    @property
    def word_bytes(self) -> int:  # bytes per packed word
        return word_shape(self.bits)[1]

    def nbytes(self) -> int:
        """Bytes the kernel and the epilogue read per call (the scales are the stored ones, not a copy)."""
        tensors = [self.codes, self.tables, self.scales, self.group_start, self.group_offset, self.edges,
                   *(self.lowrank or ()), self.in_scale, *(t for t in (self.rows,) if t is not None)]
        return sum(t.numel() * t.element_size() for t in tensors)


def word_shape(bits: int) -> tuple[int, int]:
    """(codes, bytes) per packed word: the fewest whole bytes that hold whole codes (4 codes in 3
    bytes at 6 bits: 24-bit words, which 32-bit integer ops shift; 8 codes in `bits` bytes at odd widths)."""
    entries = 8 // math.gcd(8, bits)
    return entries, entries * bits // 8


def pack_codes(grid: torch.Tensor, bits: int) -> torch.Tensor:
    """(k_pad, m) codes -> uint8 (k_pad * bits / 8, m): each output row's codes packed along k as the
    stored codes are (quantizers.packing: little-endian, so a word of `word_shape` is whole bytes of
    that stream), the bytes transposed so that output rows are contiguous."""
    return pack(grid.T.contiguous(), bits).T.contiguous()


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_codes`: (k_pad, m) codes (uint8)."""
    return unpack(packed.T.contiguous(), bits, packed.shape[0] * 8 // bits).T


def supported(layer) -> bool:
    p = layer.params()
    return (p["codes"] and p["quantizer"] == "polar" and p["transform"] in ("rfft", "rfft2")
            and p["mag_bits"] + p["phase_bits"] <= 8 and layer.layout.n_complex > 0)


def moved_codes(layer) -> KernelLayout | None:
    """The layout holding the layer's codes, if `move_codes` moved them there."""
    return next((rt for rt in layer.__dict__.get("_kernel", {}).values() if rt.holds_codes), None)


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
    k_reg = cmask.shape[1] - len(edge_cols)
    k_pad = -(-k_reg // 16) * 16
    bits = p["mag_bits"] + p["phase_bits"]
    grid = _code_grid(layer, cmask)
    regular = torch.zeros(k_pad, m, dtype=torch.int32, device=device)  # output rows contiguous (kernel docstring)
    regular[:k_reg] = grid[:, 1:1 + k_reg].T
    gc, _ = layer.entry_groups()
    gid = torch.zeros(cmask.shape, dtype=torch.int64, device=device)
    gid[cmask] = gc.gid
    offset = cmask[:, 0].to(torch.int32)  # rfft2 rows whose DC entry is complex: it comes first
    start = torch.where(offset.bool(), gid[:, 0], gid[:, 1]).to(torch.int32)
    factors = layer.lowrank_factors()
    lowrank = None
    if factors is not None:
        A, B = factors
        lowrank = (A.to(torch.complex64), (B * ft.column_weights(m, n, mode, device)).to(torch.complex64))
    cols, rows = layer.odc_scales()
    # x / (c sqrt(n)): the cast to float32, the ODC columns and the rfft's orthonormal factor in one elementwise kernel
    in_scale = (torch.ones(n, device=device) if cols is None else cols.float()) * math.sqrt(n)
    group = _ONE_GROUP if p["group_size"] == -1 else p["group_size"]
    return KernelLayout(pack_codes(regular, bits), bits, _tables(layer, device), layer.mag_scales.view(torch.float16),
                        start, offset, _edge_values(layer, cmask, rmask, list(edge_cols)),
                        grid[:, list(edge_cols)].to(torch.uint8).contiguous(), edge_cols, k_reg, group,
                        not bool(offset.any()), mode == "rfft2", lowrank,
                        in_scale, None if rows is None else rows.float(),
                        in_scale_key=hashlib.sha256(in_scale.cpu().numpy().tobytes()).digest())


def move_codes(layer, rt: KernelLayout) -> None:
    """Empty the layer's code buffers: `rt` holds the same codes (one copy in memory, not two)."""
    empty = torch.empty(0, dtype=torch.uint8, device=rt.codes.device)
    layer.mag_codes, layer.phase_codes = empty, empty.clone()
    rt.holds_codes = True


def stored_codes(layer, rt: KernelLayout) -> dict[str, torch.Tensor]:
    """The `mag_codes` and `phase_codes` buffers rebuilt bit for bit from the layout."""
    p, m, n = layer.params(), layer.out_features, layer.in_features
    cmask, _ = ft.stored_masks(m, n, layer.mode, rt.codes.device)
    grid = torch.zeros(cmask.shape, dtype=torch.int64, device=rt.codes.device)
    grid[:, 1:1 + rt.k_reg] = unpack_codes(rt.codes, rt.bits)[:rt.k_reg].T
    grid[:, list(rt.edge_cols)] = rt.edge_codes.to(torch.int64)
    stream = grid[cmask]
    home = layer.mag_scales.device  # where the layer's buffers are, should they have moved without .to()
    return {"mag_codes": pack(stream & ((1 << p["mag_bits"]) - 1), p["mag_bits"]).to(home),
            "phase_codes": pack(stream >> p["mag_bits"], p["phase_bits"]).to(home)}


def restore_codes(layer) -> None:
    """Put the codes back into the layer's buffers if a layout holds them (before the layout is dropped)."""
    rt = moved_codes(layer)
    if rt is not None:
        for name, t in stored_codes(layer, rt).items():
            setattr(layer, name, t)
        rt.holds_codes = False


def kernel_layout(layer, device: torch.device) -> KernelLayout:
    cache = layer.__dict__.setdefault("_kernel", {})
    if device not in cache:
        layer.drop_runtime_caches()  # one device at a time (restores codes a layout held)
        cache[device] = rt = build(layer, device)
        move_codes(layer, rt)
    return cache[device]


SPECTRA = "_llava_fa_spectra"  # attribute of an activation tensor: {in_scale_key: (its version, spectrum)}


def activation_spectrum(x: torch.Tensor, rt: KernelLayout) -> torch.Tensor:
    """rfft(x / in_scale) of the (tokens, n) rows of `x` (= rfft(x / c, norm="ortho"), one kernel fewer).
    Layers fed the same tensor with equal input scales (q/k/v and gate/up without ODC columns or with
    calibrated ones, which come from their shared input) take it once, up to 16 rows (decoding): it is
    kept on `x` itself, under the scales' digest, and goes with x. An in-place change of x bumps its
    version counter and computes it again; inference-mode tensors have no version counter, and there the
    reuse relies on what every transformers model does: a projection's input is not changed in place
    between its sibling projections."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] >= PREFILL_TOKENS:  # a prefill: its GEMMs dwarf the FFT, and the spectra would hold memory
        return torch.fft.rfft(rows / rt.in_scale, dim=-1)
    version = None if x.is_inference() else x._version
    kept = x.__dict__.setdefault(SPECTRA, {})
    hit = kept.get(rt.in_scale_key)
    if hit is not None and hit[0] == version:
        return hit[1]
    spec = torch.fft.rfft(rows / rt.in_scale, dim=-1)
    kept[rt.in_scale_key] = (version, spec)
    return spec


def fused_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """y = x W^T + b from the codes: the activation's spectrum times the code tiles (module docstring)."""
    rt = kernel_layout(layer, x.device)
    lead, n = x.shape[:-1], x.shape[-1]
    spec = activation_spectrum(x, rt)
    if switch("LLAVA_FA_FOURIER_GEMV") == "cuda" and gemv_cuda.runs(spec, rt):  # batch 1 (kernels/fourier_gemv.cu)
        if rt.lowrank is None:  # the epilogue in the same launch
            return gemv_cuda.fourier_gemv(spec, rt, x.dtype, rows=rt.rows, bias=layer.bias).reshape(*lead, -1)
        z = gemv_cuda.fourier_gemv(spec, rt)
    elif spec.shape[0] >= PREFILL_TOKENS and dense_kernel.runs(rt):  # prefill: one GEMM on the decoded spectrum
        z = dense_kernel.fourier_dense_matmul(spec, rt, x.dtype)
    else:
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


# Experiment switch (an environment variable; the first choice is the default): which gemv runs one
# activation row of an rfft layer, the CUDA C++ kernel (kernels/fourier_gemv.cu, built by nvcc on first
# use) or fourier_matmul's Triton gemv. From 17 tokens on, an rfft layer's prefill is one GEMM on the
# spectrum decoded per call (kernels/fourier_dense.py: 99.6 us against the Triton tiles' 559.9 us at 256
# tokens on 4096 x 4096, H200, docs/results/kernels_h200/); rfft2 layers keep the tiles.
# scripts/bench_fourier_kernel.py times both gemvs side by side; records name the switches set.
SWITCHES = {"LLAVA_FA_FOURIER_GEMV": ("cuda", "triton")}
PREFILL_TOKENS = 17  # from here on the prefill GEMM (below: fourier_matmul's gemv and batch tiles)


def switch(name: str) -> str:
    choices = SWITCHES[name]
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}. Fix: set it to one of "
                          f"those or unset it (default {choices[0]})")
    return value


def runs(layer, x: torch.Tensor) -> bool:
    """`fused`: wherever Triton runs and the layer's form is supported."""
    return kernel.available(x) and supported(layer)


def runs_by_default(layer, x: torch.Tensor) -> bool:
    """`auto`: float16/bfloat16 activations only (float32 ones would go through a TF32 dot)."""
    return x.dtype in (torch.float16, torch.bfloat16) and runs(layer, x)
