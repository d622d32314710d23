"""Where one `fourier` layer call spends its time on a GPU (needs CUDA and Triton).

Three views of one weight shape at one token count (default: Llama-2-7B's 4096 x 4096, 3+3 bits):
- host: microseconds of Python per call (launches queued back to back, the GPU never the bottleneck
  for small shapes) for the kernel alone and the whole `fused` forward, and cProfile's top entries;
- GPU: torch.profiler's CUDA kernels of 50 `fused` calls (what else than the kernel runs);
- `--ncu`: only run the `fused` forward a few times (the kernels it picks: the CUDA gemv at one token,
  the decoded-spectrum GEMM from 17), for `ncu -k regex:'_fourier|polar_gemv|_weighted' ... python THIS --ncu`.

    PYTHONPATH=src python scripts/profile_fourier_kernel.py --shape 4096x4096 --tokens 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
from bench_fourier_kernel import make_layer

from llava_fa.formats import fourier_runtime
from llava_fa.kernels import fourier_matmul as km


def host_us(fn, calls: int = 300) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x4096")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--form", default="rfft")
    ap.add_argument("--ncu", action="store_true", help="only launch the kernel 5 times (for ncu)")
    args = ap.parse_args()
    out_f, in_f = (int(v) for v in args.shape.split("x"))
    layer = make_layer(out_f, in_f, args.form)
    layer.forward_mode = "fused"
    x = torch.randn(args.tokens, in_f, device="cuda", dtype=torch.bfloat16)
    rt = fourier_runtime.kernel_layout(layer, x.device)
    spec = torch.fft.rfft(x.float(), dim=-1, norm="ortho")
    kernel = lambda: km.fourier_matmul(spec, rt, x.dtype)  # noqa: E731
    if args.ncu:
        for _ in range(5):
            layer(x)
        torch.cuda.synchronize()
        return
    print(f"# {args.shape} {args.form} tokens {args.tokens}: blocks "
          f"{km.default_blocks(args.tokens, out_f, rt.k_reg, rt.group, rt.aligned)}")
    print(f"host us per call: kernel launch {host_us(kernel):.1f}, fused forward {host_us(lambda: layer(x)):.1f}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        layer(x)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(50):
            layer(x)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
