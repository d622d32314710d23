"""One activation row of an `rfft` fourier layer through the CUDA C++ gemv (kernels/fourier_gemv.cu).

The kernel reads the Triton kernels' layout (formats/fourier_runtime.KernelLayout) as it is, with its
epilogue (self-conjugate columns, ODC rows, bias, cast) in the same launch. nvcc builds it on first use
into a cubin launched through the driver API (kernels/cuda_build.py); where it cannot be built, `runs` is
False and fourier_matmul's Triton gemv runs instead, after one warning that says why.
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import torch

from llava_fa.kernels import cuda_build

SOURCE = Path(__file__).with_name("fourier_gemv.cu")
ROWS_PER_BLOCK = 128  # as in the source: 32 lanes x 4 rows
# (entries per warp, warps per block) the source is built for: every width (32, 4) and (64, 4); 6-bit
# codes (PolarQuant 3+3) also the shapes scripts/bench_fourier_kernel.py --cuda-sweep compares
SHAPES = {bits: ((32, 4), (64, 4)) for bits in range(2, 9)}
SHAPES[6] = ((16, 4), (16, 8), (32, 4), (32, 8), (64, 4), (64, 8), (128, 4))
_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_WARNED: set[str] = set()


class GemvArgs(ctypes.Structure):  # the kernel's argument block, field for field as in the source
    _fields_ = [(name, ctypes.c_void_p) for name in ("spec", "codes", "tables", "scales", "group_start", "edges",
                                                      "rows", "bias", "partials", "counters", "out")] + \
               [(name, ctypes.c_int) for name in ("m", "k_reg", "n_words", "group", "n_edge", "edge0", "edge1",
                                                  "bias_kind", "out_kind")]


def _kernel(device: torch.device, bits: int, kw: int, warps: int = 4):
    func = cuda_build.kernel(SOURCE, f"polar_gemv_b{bits}_kw{kw}_w{warps}", device)
    why = cuda_build.missing(SOURCE, device)
    if func is None and why and why not in _WARNED and why != "no CUDA device":
        _WARNED.add(why)
        warnings.warn(f"the CUDA gemv of fourier layers is not available ({why}); the Triton gemv runs "
                      "instead. Fix: install a CUDA toolkit with nvcc and set CUDA_HOME.", stacklevel=3)
    return func


def shape_fits(rt, kw: int = 32) -> bool:
    """The layouts the kernel takes: an rfft layer (real output, groups starting at each row's first
    entry), rows in fours (uint32 loads), 2-8 bit codes, and groups holding whole warps' entries."""
    m = rt.codes.shape[1]
    return (not rt.complex_out and rt.aligned and m % 4 == 0 and 2 <= rt.bits <= 8 and rt.group % kw == 0
            and rt.codes.is_contiguous())


def runs(spec: torch.Tensor, rt) -> bool:
    """Batch 1 on a CUDA tensor, a layout it takes, and the kernel built."""
    return spec.is_cuda and spec.shape[0] == 1 and shape_fits(rt) and _kernel(spec.device, rt.bits, 32) is not None


def default_kw(rt) -> int:
    """Entries per warp: 64 on 7B-sized layers (H200, 3+3 bits, kernels_h200/0101892/fourier_rfft.json: 7.2
    against 7.9 us with 32 on 4096 x 4096, 12.8 against 14.4 on 11008 x 4096, 13.1 against 14.8 on 4096 x
    11008); 32 on small layers, where it gives twice the blocks (not compared there)."""
    return 64 if shape_fits(rt, 64) and rt.codes.shape[1] * rt.k_reg >= 1 << 22 else 32


def fourier_gemv(spec: torch.Tensor, rt, dtype: torch.dtype = torch.float32, *, rows: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, kw: int | None = None, warps: int = 4) -> torch.Tensor:
    """y (1, m) in `dtype` = Z of the layer (as fourier_matmul returns it) / rows + bias, from the
    activation spectrum `spec` (1, h) complex64; rows / bias None: none applied. The products are summed
    in float16 eight at a time (the activation scaled by a power of two per block), then in float32:
    within about 1e-3 of the float32 sums."""
    kw = default_kw(rt) if kw is None else kw
    if (kw, warps) not in SHAPES.get(rt.bits, ()) or not shape_fits(rt, kw) or spec.shape[0] != 1:
        raise ValueError("fourier_gemv takes one activation row of an rfft layer whose layout fits (shape_fits), "
                         f"with entries per warp and warps per block among {SHAPES.get(rt.bits, ())}")
    func = _kernel(spec.device, rt.bits, kw, warps)
    if func is None:
        raise RuntimeError(f"the CUDA gemv is not available: {cuda_build.missing(SOURCE, spec.device)}")
    m = rt.codes.shape[1]
    row_blocks, splits = -(-m // ROWS_PER_BLOCK), -(-rt.k_reg // (warps * kw))
    if rt.counters is None or rt.counters.numel() < row_blocks:  # reset to zero by the kernel after each call
        rt.counters = torch.zeros(row_blocks, dtype=torch.int32, device=spec.device)
    spec = spec.contiguous()
    partials = torch.empty(splits, m, dtype=torch.float32, device=spec.device)
    out = torch.empty(1, m, dtype=dtype, device=spec.device)
    edges = list(rt.edge_cols) + [0, 0]
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    args = GemvArgs(spec.data_ptr(), rt.codes.data_ptr(), rt.tables.data_ptr(), rt.scales.data_ptr(),
                    rt.group_start.data_ptr(), rt.edges.data_ptr(), ptr(rows), ptr(bias), partials.data_ptr(),
                    rt.counters.data_ptr(), out.data_ptr(), m, rt.k_reg, rt.codes.shape[0] // rt.word_bytes,
                    rt.group, len(rt.edge_cols), edges[0], edges[1], _KIND[bias.dtype] if bias is not None else 0,
                    _KIND[dtype])
    cuda_build.launch(func, (row_blocks, splits), 32 * warps, args, spec.device)
    return out
