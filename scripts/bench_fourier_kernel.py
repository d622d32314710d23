"""Time one `fourier` (LLaVA-FA) layer's GPU backends side by side (needs CUDA and Triton).

For each weight shape (Llama-2-7B layers and the testbed's MLP), form and token count it times, in
the same run: a dense bfloat16 `F.linear` (the uncompressed model), the `fused` backend (rfft of the
activation + the kernel on the codes + the epilogue), the kernel it runs alone (one token of an rfft
layer: the CUDA gemv, kernels/fourier_gemv.cu; from 17 tokens: one GEMM on the spectrum decoded per call,
kernels/fourier_dense.py; else the Triton kernel, kernels/fourier_matmul.py), beside it the Triton kernel
alone, the CUDA gemv with 32 entries per warp (where it takes 64 by default), the fused path with the
Triton gemv, and the `spectral` and `dequant` paths. It prints microseconds per call, the speed-up over
dense and the bandwidth achieved on the bytes the kernel reads (codes, scales, tables), against the copy
bandwidth measured first. Codes come from the layer's own quantizer on random weights (set_codes of the
spectrum, no search): speed does not depend on them.
Usage (on a GPU machine):

    PYTHONPATH=src python scripts/bench_fourier_kernel.py [--cudagraph] --json OUT.json > OUT.md
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
import torch.nn.functional as F
from bench_kernels import GRAPHS, copy_bandwidth, time_us, write_record

from llava_fa.formats import fourier_runtime
from llava_fa.formats.fourier import FourierLinear
from llava_fa.kernels import cuda_build
from llava_fa.kernels import fourier_dense as kd
from llava_fa.kernels import fourier_gemv_cuda as kg
from llava_fa.kernels import fourier_matmul as km
from llava_fa.transforms import fourier as ft

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (1536, 576)]
FORMS = {  # name -> FourierLinear parameters (3 + 3 bits, groups of 64: about 3.2 bpw)
    "rfft": dict(transform="rfft", rank=0),
    "rfft2": dict(transform="rfft2", rank=0),
    "rfft+r8": dict(transform="rfft", rank=8, lr_bits=8),
}
BASE = dict(codes=True, quantizer="polar", mag_bits=3, phase_bits=3, real_bits=3, group_size=64, levels="uniform",
            lr_bits=8, col_scales=False, row_scales=False)


def make_layer(out_f: int, in_f: int, form: str) -> FourierLinear:
    torch.manual_seed(0)
    W = torch.randn(out_f, in_f, device="cuda") * 0.02
    layer = FourierLinear(in_f, out_f, False, **{**BASE, **FORMS[form]}).cuda()
    layer.set_codes(ft.forward(W, layer.mode))
    if layer.params()["rank"]:
        r = layer.params()["rank"]
        h = layer.layout.lr_width
        layer.set_lowrank(torch.randn(r, out_f, dtype=torch.complex64, device="cuda") * 0.01,
                          torch.randn(r, h, dtype=torch.complex64, device="cuda") * 0.01)
    return layer


def measure(out_f: int, in_f: int, form: str, tokens: int) -> dict:
    layer = make_layer(out_f, in_f, form)
    x = torch.randn(tokens, in_f, device="cuda", dtype=torch.bfloat16)
    dense = layer.dequantize(torch.bfloat16)
    ref = x.float() @ dense.float().T
    layer.forward_mode = "fused"
    err = ((layer(x).float() - ref).abs().max() / ref.abs().max()).item()
    if err > 0.03:
        raise SystemExit(f"fused result off by {err:.3g} for {out_f}x{in_f} {form}, {tokens} tokens")
    rt = fourier_runtime.kernel_layout(layer, x.device)
    spec = torch.fft.rfft(x.float(), dim=-1, norm="ortho")
    triton_kernel = lambda: km.fourier_matmul(spec, rt, x.dtype)  # noqa: E731
    kernel = triton_kernel
    if tokens == 1 and kg.runs(spec, rt):
        kernel = lambda: kg.fourier_gemv(spec, rt, x.dtype)  # noqa: E731
    elif tokens >= fourier_runtime.PREFILL_TOKENS and kd.runs(rt):
        kernel = lambda: kd.fourier_dense_matmul(spec, rt, x.dtype)  # noqa: E731
    zt = triton_kernel().float()
    row = {"out": out_f, "in": in_f, "form": form, "tokens": tokens, "bpw": layer.bits_per_weight(),
           "dense_bytes": dense.numel() * 2, "kernel_bytes": rt.nbytes(),
           "rel_err": err, "kernel_vs_triton": ((kernel().float() - zt).abs().max() / zt.abs().max()).item(),
           "dense_us": time_us(lambda: F.linear(x, dense)),
           "fused_us": time_us(lambda: layer(x)),
           "kernel_us": time_us(kernel), "triton_us": time_us(triton_kernel),
           "cuda_kw32_us": None, "fused_triton_us": None}
    if kernel is not triton_kernel and tokens == 1:
        if kg.default_kw(rt) != 32:
            row["cuda_kw32_us"] = time_us(lambda: kg.fourier_gemv(spec, rt, x.dtype, kw=32))
        os.environ["LLAVA_FA_FOURIER_GEMV"] = "triton"
        row["fused_triton_us"] = time_us(lambda: layer(x))
        del os.environ["LLAVA_FA_FOURIER_GEMV"]
    for mode in ("spectral", "dequant"):  # they build index masks on the host: no CUDA-graph capture
        layer.forward_mode = mode
        row[f"{mode}_us"] = None if GRAPHS["on"] else time_us(lambda: layer(x))
    return row


SWEEP_GEMV = [km.Blocks(1, bm, bk, sk, w, 3) for bm in (64, 128, 256) for bk in (32, 64) for sk in (16, 32, 64)
              for w in (4, 8)]
SWEEP_DECODE = [km.Blocks(16, bm, bk, sk, 4, 3) for bm in (16, 32, 64) for bk in (64, 128, 256)
                for sk in (1, 4, 8, 16)]
SWEEP_PREFILL = [km.Blocks(bb, bm, bk, 1, w, st) for bb in (64, 128) for bm in (64, 128) for bk in (32, 64)
                 for w in (4, 8) for st in (2, 3)]


def sweep(out_f: int, in_f: int, form: str, tokens: int, top: int = 5) -> list[tuple[float, km.Blocks]]:
    """Kernel microseconds of every tile configuration, fastest first (invalid ones skipped)."""
    layer = make_layer(out_f, in_f, form)
    x = torch.randn(tokens, in_f, device="cuda", dtype=torch.bfloat16)
    rt = fourier_runtime.kernel_layout(layer, x.device)
    spec = torch.fft.rfft(x.float(), dim=-1, norm="ortho")
    ref = km.fourier_matmul(spec, rt, x.dtype)
    found = []
    for bl in SWEEP_GEMV if tokens == 1 else SWEEP_DECODE if tokens <= 16 else SWEEP_PREFILL:
        try:
            got = km.fourier_matmul(spec, rt, x.dtype, bl)
            if not torch.allclose(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item()):
                continue
            found.append((time_us(lambda: km.fourier_matmul(spec, rt, x.dtype, bl)), bl))
        except Exception:  # noqa: BLE001 - out of registers / shared memory: not a candidate
            continue
    return sorted(found, key=lambda t: t[0])[:top]


def cuda_sweep(out_f: int, in_f: int, form: str) -> list[tuple[float, tuple[int, int]]]:
    """Batch-1 microseconds of every (entries per warp, warps per block) the CUDA gemv is built for at the
    layer's code width (kernels/fourier_gemv_cuda.SHAPES), fastest first, each checked against the default."""
    layer = make_layer(out_f, in_f, form)
    x = torch.randn(1, in_f, device="cuda", dtype=torch.bfloat16)
    rt = fourier_runtime.kernel_layout(layer, x.device)
    spec = torch.fft.rfft(x.float(), dim=-1, norm="ortho")
    ref = kg.fourier_gemv(spec, rt).float()
    found = []
    for kw, warps in [s for s in kg.SHAPES[rt.bits] if kg.shape_fits(rt, s[0])]:
        got = kg.fourier_gemv(spec, rt, kw=kw, warps=warps).float()
        if (got - ref).abs().max() > 2e-3 * ref.abs().max():
            raise SystemExit(f"CUDA gemv kw {kw} warps {warps} disagrees with the default on {out_f}x{in_f}")
        found.append((time_us(lambda: kg.fourier_gemv(spec, rt, x.dtype, kw=kw, warps=warps)), (kw, warps)))
    return sorted(found)


def table_line(r: dict, copy_gbs: float) -> str:
    gbs = r["kernel_bytes"] / r["kernel_us"] / 1e3
    dense_gbs = r["dense_bytes"] / r["dense_us"] / 1e3
    return (f"| {r['out']} x {r['in']} | {r['form']} | {r['bpw']:.2f} | {r['tokens']} | {r['dense_us']:.1f} "
            f"({dense_gbs / copy_gbs:.0%}) | {r['fused_us']:.1f} | {r['dense_us'] / r['fused_us']:.2f}x | "
            f"{r['kernel_us']:.1f} | {gbs:.0f} GB/s ({gbs / copy_gbs:.0%}) | {r['triton_us']:.1f} | "
            f"{_us(r['cuda_kw32_us'])} | {_us(r['fused_triton_us'])} | {_us(r['spectral_us'])} | "
            f"{_us(r['dequant_us'])} |")


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--shapes", nargs="+", default=[f"{o}x{i}" for o, i in SHAPES], help="OUTxIN weight shapes")
    ap.add_argument("--cudagraph", action="store_true", help="time CUDA-graph replays (no host overhead, warm L2)")
    ap.add_argument("--sweep", action="store_true", help="time every tile configuration of the kernel instead")
    ap.add_argument("--cuda-sweep", action="store_true",
                    help="time every shape the CUDA gemv is built for instead (batch 1, rfft)")
    args = ap.parse_args()
    GRAPHS["on"] = args.cudagraph
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    if args.cuda_sweep:
        for out_f, in_f in shapes:
            found = cuda_sweep(out_f, in_f, "rfft")
            print(f"{out_f}x{in_f} rfft 1 token, CUDA gemv (entries per warp, warps): " +
                  "; ".join(f"{us:.1f} us {shape}" for us, shape in found), flush=True)
        return
    if args.sweep:
        for (out_f, in_f), form, tokens in itertools.product(shapes, args.forms, args.tokens):
            best = sweep(out_f, in_f, form, tokens)
            default = km.default_blocks(tokens, out_f, in_f // 2, 64, True)
            print(f"{out_f}x{in_f} {form} tokens {tokens} default {default}: " +
                  "; ".join(f"{us:.1f} us {bl}" for us, bl in best), flush=True)
        return
    if not torch.cuda.is_available() or km.triton is None:
        raise SystemExit("bench_fourier_kernel.py needs a CUDA GPU and Triton. Fix: run it on a GPU machine.")
    copy_gbs = copy_bandwidth()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {km.triton.__version__}; bfloat16 "
          f"activations, PolarQuant 3+3 bits, groups of 64; median us per call, "
          f"{'CUDA-graph replays (no host overhead, warm L2)' if args.cudagraph else 'host overhead included, cold L2'}; "
          f"copy bandwidth {copy_gbs:.0f} GB/s")
    print("| out x in | form | bpw | tokens | dense bf16 us (of copy bw) | fused us | fused vs dense | kernel us | "
          "kernel bw | Triton kernel us | CUDA gemv 32/warp us | fused, Triton gemv us | spectral us | dequant us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (out_f, in_f), form, tokens in itertools.product(shapes, args.forms, args.tokens):
        rows.append(measure(out_f, in_f, form, tokens))
        print(table_line(rows[-1], copy_gbs), flush=True)
    write_record(args.json, copy_gbs, rows, cuda_kernels=cuda_build.status())  # which CUDA kernels were built


if __name__ == "__main__":
    main()
