"""Time one `affine` layer's forward modes side by side on a GPU (needs CUDA and Triton).

For each weight shape, bit width and token count it prints microseconds per call for a dense
float16 `F.linear` (what the "cached" mode runs), the unfused "dequant" mode, and the fused Triton
kernel with its default tiles and with the best of a few other tiles, plus the ratios measured in
the same run, and the bytes each reads for the weight. Usage (on a GPU machine):

    PYTHONPATH=src python scripts/bench_kernels.py > docs/results/testbed_h100/bench_kernels_h100.txt
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from llava_fa.kernels import affine_matmul as km
from llava_fa.formats import AffineLinear
from llava_fa.quantizers import AffineSpec, quantize_grouped

SHAPES = [(1536, 576), (4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): testbed MLP, 7B-sized layers
TILES = [(16, 32, 128), (16, 64, 64), (16, 64, 128), (16, 128, 64), (32, 64, 64), (64, 64, 64), (64, 128, 64),
         (128, 128, 32)]


def time_us(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--group-size", type=int, default=64)  # 64 divides every width here, 128 not 576
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    if not torch.cuda.is_available() or km.triton is None:
        raise SystemExit("bench_kernels.py needs a CUDA GPU and Triton. Fix: run it on a GPU machine.")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {km.triton.__version__}, "
          f"float16 activations, asymmetric codes, group {args.group_size}; us per call, mean of {args.reps}")
    print("| out x in | bits | tokens | dense fp16 | dequant | fused (default tiles) | fused (best tiles) | "
          "dense / fused | dequant / fused | weight bytes fp16 / packed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (out_f, in_f), bits, tokens in itertools.product(SHAPES, args.bits, args.tokens):
        torch.manual_seed(0)
        w = torch.randn(out_f, in_f) * 0.02
        codes, scale, zero = quantize_grouped(w, AffineSpec(bits, args.group_size, False))
        layer = AffineLinear.from_codes(codes, scale, zero, bits=bits, sym=False).cuda()
        x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
        dense = layer.dequantize(torch.float16)
        t_dense = time_us(lambda: F.linear(x, dense), args.reps)
        layer.forward_mode = "dequant"
        t_deq = time_us(lambda: layer(x), max(args.reps // 10, 5))

        def fused(tiles=None):
            return km.affine_matmul(x, layer.qweight, layer.scales, layer.qzeros, bits, layer.group_size, out_f, tiles)

        err = ((fused().float() - x.float() @ dense.float().T).abs().max() / dense.float().abs().max()).item()
        if err > 0.05:
            raise SystemExit(f"fused result off by {err:.3g} for {out_f}x{in_f} {bits}-bit, {tokens} tokens")
        t_default = time_us(fused, args.reps)
        best = min((time_us(lambda t=t: fused(t), args.reps), t) for t in TILES
                   if t[0] <= max(16, tokens * 4))
        packed = sum(t.numel() * t.element_size() for t in layer.stored_tensors().values())
        print(f"| {out_f} x {in_f} | {bits} | {tokens} | {t_dense:.1f} | {t_deq:.1f} | {t_default:.1f} | "
              f"{best[0]:.1f} {best[1]} | {t_dense / t_default:.2f} | {t_deq / t_default:.2f} | "
              f"{dense.numel() * 2 / packed:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
