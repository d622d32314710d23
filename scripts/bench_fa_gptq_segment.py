"""Time input-axis fa-gptq per module on CUDA: the pair loop against the segment kernel (kernels/fa_gptq_segment.py).

For Llama-2-7B's weight shapes and a random Hessian (X^T X of 2 x in random tokens), it compresses
the weight with `fa-gptq` (axis=input, the default) with the kernel and with the torch loop
(fa_gptq_segment.can_run made to decline), prints seconds per module (the Hessian's preparation, the
spectral Hessian's Cholesky and the layer's packing included, as compress runs it) and whether the
stored layers are identical. The kernel is compiled on a small weight first (the same group widths),
so its time is the steady state. --block-rows / --warps set the kernel's tile
(fa_gptq_segment.BLOCK_ROWS, NUM_WARPS). Usage (on a GPU machine):

    PYTHONPATH=src python scripts/bench_fa_gptq_segment.py [--mag-bits 2] [--phase-bits 4] [--group-size 64]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import torch

from llava_fa.calibration.stats import LayerStats
from llava_fa.kernels import fa_gptq_segment
from llava_fa.methods import build_config, get_method

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): Llama-2-7B attention, MLP up, MLP down


def timed(method, W: torch.Tensor, stats: LayerStats, loop: bool) -> tuple[float, dict]:
    """Seconds for one compress, and the stored layer's state dict."""
    with mock.patch.object(fa_gptq_segment, "can_run", lambda *a: False) if loop else contextlib.nullcontext():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        layer = method.compress(W, stats)
        torch.cuda.synchronize()
    return time.perf_counter() - t0, layer.state_dict()


def problem(out_f: int, in_f: int, seed: int = 0) -> tuple[torch.Tensor, LayerStats]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    W = torch.randn(out_f, in_f, device="cuda", generator=g) * 0.02
    X = torch.randn(2 * in_f, in_f, device="cuda", generator=g)
    return W, LayerStats(in_f, xtx={"text": X.T @ X}, tokens={"text": 2 * in_f, "image": 0})


def same_layers(a: dict, b: dict) -> str:
    """'yes', or the share of equal codes (magnitude and phase) where the layers differ."""
    if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a):
        return "yes"
    equal = [(a[k] == b[k]).float().mean().item() for k in a if a[k].shape == b[k].shape and "code" in k]
    return f"no ({min(equal, default=0.0):.6%} equal codes)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mag-bits", type=int, default=2)
    ap.add_argument("--phase-bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--block-rows", type=int, default=fa_gptq_segment.BLOCK_ROWS)
    ap.add_argument("--warps", type=int, default=fa_gptq_segment.NUM_WARPS)
    ap.add_argument("--skip-loop", action="store_true", help="time the kernel only")
    args = ap.parse_args()
    if not (torch.cuda.is_available() and fa_gptq_segment.triton is not None):
        raise SystemExit("bench_fa_gptq_segment: needs CUDA and Triton (this machine has "
                         f"{'no CUDA device' if not torch.cuda.is_available() else 'no Triton'}); nothing timed")
    fa_gptq_segment.BLOCK_ROWS, fa_gptq_segment.NUM_WARPS = args.block_rows, args.warps
    method = get_method("fa-gptq")(build_config("fa-gptq", {"axis": "input", "mag_bits": args.mag_bits,
                                                            "phase_bits": args.phase_bits,
                                                            "group_size": args.group_size}))
    print(f"fa-gptq axis=input, mag_bits {args.mag_bits}, phase_bits {args.phase_bits}, group_size "
          f"{args.group_size}, BLOCK_ROWS {args.block_rows}, num_warps {args.warps}")
    print("| shape (out x in) | loop s | kernel s | speed-up | layers identical |")
    print("|---|---|---|---|---|")
    for out_f, in_f in SHAPES:
        W, stats = problem(out_f, in_f)
        timed(method, W[:256], stats, loop=False)  # compile (the same group widths)
        t_kernel, layer = timed(method, W, stats, loop=False)
        if args.skip_loop:
            print(f"| {out_f} x {in_f} | - | {t_kernel:.3f} | - | - |")
            continue
        t_loop, layer_l = timed(method, W, stats, loop=True)
        print(f"| {out_f} x {in_f} | {t_loop:.3f} | {t_kernel:.3f} | {t_loop / t_kernel:.1f}x "
              f"| {same_layers(layer, layer_l)} |")


if __name__ == "__main__":
    main()
