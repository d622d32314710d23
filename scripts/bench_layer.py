"""Compression time of one large linear layer (default 4096 x 11008, a LLaMA-7B MLP shape).

    python scripts/bench_layer.py --device cuda            # on a GPU
    python scripts/bench_layer.py --device cpu --out 1024 --in 2816

The weight is Gaussian with a few heavy columns (the outlier pattern of LLM weights), the
calibration statistics come from Gaussian activations with a few large channels (a quarter of the
tokens stand for image tokens, with loud channels of their own). Prints, per
method configuration: seconds (median of --repeat runs after one warm-up), bits per weight from
the stored bytes, relative weight error and activation-weighted error.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from llava_fa.methods.base import LayerStats, build_config, get_method

CONFIGS = [
    ("rtn", {"bits": 3, "group_size": 64}),
    ("gptq", {"bits": 3, "group_size": 64}),
    ("fa", {"transform": "rfft2", "structure": "quant"}),
    ("fa", {"transform": "rfft2"}),  # the paper's joint form with the default rank
    ("fa", {"transform": "rfft2", "rank": 32, "iters": 3}),
    ("fa", {"transform": "rfft2", "odc": "calibrated"}),
    ("pb-llm", {}),  # the binarization family at its published defaults
    ("billm", {}),
    ("arb-x", {}),
    ("arb-rc", {}),
    ("sab", {}),
]


def synthetic_layer(m: int, n: int, tokens: int, device) -> tuple[torch.Tensor, LayerStats]:
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(m, n, generator=g) * 0.02
    w[:, torch.randperm(n, generator=g)[: n // 100]] *= 8  # outlier input channels
    x = torch.randn(tokens, n, generator=g)
    x[:, torch.randperm(n, generator=g)[: n // 200]] *= 20
    # The first quarter of the tokens plays the image tokens (with their own loud channels), so that
    # SAB's per-modality significance has two different Hessians to compare.
    img = tokens // 4
    x[:img, torch.randperm(n, generator=g)[: n // 200]] *= 10
    xi, xt = x[:img], x[img:]
    stats = LayerStats(n, xtx={"text": xt.T @ xt, "image": xi.T @ xi}, sq={"text": (xt * xt).sum(0), "image": (xi * xi).sum(0)},
                       tokens={"text": tokens - img, "image": img})
    return w.to(device), stats.to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=int, default=4096, dest="m")
    p.add_argument("--in", type=int, default=11008, dest="n")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", nargs="*", help="method names to time (default: all configurations)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    w, stats = synthetic_layer(args.m, args.n, args.tokens, args.device)
    table = Table(title=f"compressing one {args.m} x {args.n} layer on {args.device}"
                        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    for col in ("method", "options", "seconds (median)", "bpw", "rel. error", "act. error"):
        table.add_column(col, justify="right" if col != "options" else "left")
    for name, options in CONFIGS:
        if args.only and name not in args.only:
            continue
        method = get_method(name)(build_config(name, options))
        times = []
        for _ in range(args.repeat + 1):
            sync(args.device)
            t0 = time.perf_counter()
            layer = method.compress(w, stats)
            sync(args.device)
            times.append(time.perf_counter() - t0)
        d = layer.dequantize(torch.float32) - w
        err = (d.norm() / w.norm()).item()
        # ||D X^T|| / ||W X^T|| from X^T X: what GPTQ and calibrated ODC minimize.
        xtx = stats.xtx_sum()
        act = ((d @ xtx * d).sum() / (w @ xtx * w).sum()).sqrt().item()
        table.add_row(name, str(options or "defaults"), f"{statistics.median(times[1:]):.2f}",
                      f"{layer.bits_per_weight():.3f}", f"{err:.4f}", f"{act:.4f}")
    Console().print(table)


if __name__ == "__main__":
    main()
