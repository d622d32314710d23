"""Time gptq_quantize per module on CUDA: the column loop against the block kernel (kernels/gptq_block.py).

For Llama-2-7B's weight shapes and a random Hessian (X^T X of 2 x in random tokens), it runs
gptq_quantize with the kernel and with the column loop (AffineColumns.fused_block made to decline),
prints seconds per module (the Hessian's preparation included, as compress runs it) and whether
codes, scales and zeros are identical. The kernel is compiled on a small weight first, so its time
is the steady state. --block-rows / --warps set the kernel's tile (gptq_block.BLOCK_ROWS, NUM_WARPS).
Usage (on a GPU machine):

    PYTHONPATH=src python scripts/bench_gptq_block.py [--bits 4] [--group-size 128 -1] [--sym] [--block-rows 16]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import torch

from llava_fa.kernels import gptq_block
from llava_fa.methods.gptq.method import AffineColumns, gptq_quantize

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): Llama-2-7B attention, MLP up, MLP down


def timed(W: torch.Tensor, H: torch.Tensor, loop: bool, **kw) -> tuple[float, tuple]:
    """Seconds for one gptq_quantize, and its (codes, scale, zero)."""
    with mock.patch.object(AffineColumns, "fused_block", lambda *a: None) if loop else contextlib.nullcontext():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = gptq_quantize(W, H, **kw)
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def problem(out_f: int, in_f: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    W = torch.randn(out_f, in_f, device="cuda", generator=g) * 0.02
    X = torch.randn(2 * in_f, in_f, device="cuda", generator=g)
    return W, X.T @ X


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, nargs="+", default=[128, -1])
    ap.add_argument("--sym", action="store_true")
    ap.add_argument("--block-rows", type=int, default=gptq_block.BLOCK_ROWS)
    ap.add_argument("--warps", type=int, default=gptq_block.NUM_WARPS)
    ap.add_argument("--skip-loop", action="store_true", help="time the kernel only")
    args = ap.parse_args()
    if not (torch.cuda.is_available() and gptq_block.triton is not None):
        raise SystemExit("needs CUDA and Triton")
    gptq_block.BLOCK_ROWS, gptq_block.NUM_WARPS = args.block_rows, args.warps
    print(f"bits {args.bits}, sym {args.sym}, BLOCK_ROWS {args.block_rows}, num_warps {args.warps}")
    print("| shape (out x in) | group | loop s | kernel s | speed-up | codes identical | scales identical |")
    print("|---|---|---|---|---|---|---|")
    for group_size in args.group_size:
        kw = dict(bits=args.bits, group_size=group_size, sym=args.sym)
        for out_f, in_f in SHAPES:
            W, H = problem(out_f, in_f)
            timed(W[:256], H, loop=False, **kw)  # compile (the same block shapes and groups)
            t_kernel, (codes, scale, zero) = timed(W, H, loop=False, **kw)
            if args.skip_loop:
                print(f"| {out_f} x {in_f} | {group_size} | - | {t_kernel:.3f} | - | - | - |")
                continue
            t_loop, (codes_l, scale_l, zero_l) = timed(W, H, loop=True, **kw)
            same = (codes == codes_l).float().mean().item()
            scales = torch.equal(scale, scale_l) and torch.equal(zero, zero_l)
            print(f"| {out_f} x {in_f} | {group_size} | {t_loop:.3f} | {t_kernel:.3f} | {t_loop / t_kernel:.0f}x "
                  f"| {'yes' if same == 1 else f'no ({same:.6%} equal)'} | {'yes' if scales else 'no'} |")


if __name__ == "__main__":
    main()
