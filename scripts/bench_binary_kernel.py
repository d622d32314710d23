"""Time one `binary` layer's GPU paths side by side (needs CUDA and Triton).

For each weight shape (Llama-2-7B's layers), layout and token count it times, in the same run:
a dense bfloat16 `F.linear` (what "cached" runs), the fused kernel ("fused": kernels/binary_matmul.py,
called through the layer as a model would) and the dequantization per call ("dequant"); it prints
microseconds per call, the speed-up over dense and the bandwidth achieved on the bytes each reads
(dense: the bf16 weight; fused: its layout, `BinaryLayout.nbytes()`), against the copy bandwidth.
Timing helpers are scripts/bench_kernels.py's (do_bench from a cold L2, or CUDA-graph replays with
--cudagraph; dequant cannot be captured: it syncs on the salient mask). Usage (on a GPU machine):

    PYTHONPATH=src python scripts/bench_binary_kernel.py [--cudagraph] [--sweep] --json OUT.json > OUT.md
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from bench_kernels import GRAPHS, copy_bandwidth, time_us, write_record
from llava_fa.formats.binary import BinaryLinear, BinaryParts
from llava_fa.kernels import binary_matmul as bm

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): Llama-2-7B attention, MLP up, MLP down
# BiLLM / ARB / ARB-X: bitmap groups, salient columns, means; ARB-RC / SAB: the same with column scales, no means
LAYOUTS = {"billm": dict(means=True, col=False), "arb-rc": dict(means=False, col=True)}
SWEEP = ([(bn, 128, split, 4) for bn in (16, 32, 64) for split in (1, 2, 4, 8)]
         + [(32, 64, split, 4) for split in (1, 4)] + [(64, 128, split, 8) for split in (1, 4)])


def random_layer(out_f: int, in_f: int, layout: str, block_size: int = 128, salient_frac: float = 0.08) -> BinaryLinear:
    """A layer of a method's layout with random parts (the kernel's speed does not depend on the values)."""
    g = torch.Generator().manual_seed(0)
    nb, opts = -(-in_f // block_size), LAYOUTS[layout]
    bit = lambda *s: torch.rand(*s, generator=g) > 0.5  # noqa: E731
    salient = torch.rand(in_f, generator=g) < salient_frac
    p = BinaryParts(signs=bit(out_f, in_f), row_scales=torch.rand(out_f, nb, 3, generator=g) * 0.02 + 0.005,
                    salient=salient, res_signs_full=bit(out_f, in_f) & salient[None, :],
                    res_scales=torch.rand(out_f, nb, generator=g) * 0.01,
                    res_means=torch.randn(out_f, nb, generator=g) * 1e-3,
                    bitmap=bit(out_f, in_f) & ~salient[None, :])
    if opts["means"]:
        p.means = torch.randn(out_f, nb, 3, generator=g) * 1e-3
    if opts["col"]:
        p.col_scales = torch.rand(in_f, generator=g) + 0.5
    return BinaryLinear.from_parts(p, block_size=block_size)


def measure(out_f: int, in_f: int, layout: str, tokens: int, sweep: bool) -> dict:
    layer = random_layer(out_f, in_f, layout).cuda()
    x = torch.randn(tokens, in_f, device="cuda", dtype=torch.bfloat16)
    dense = layer.dequantize(torch.bfloat16)
    ref = x.float() @ dense.float().T
    layer.forward_mode = "fused"
    err = ((layer(x).float() - ref).abs().max() / ref.abs().max()).item()
    if err > 0.02:
        raise SystemExit(f"fused result off by {err:.3g} for {out_f}x{in_f} {layout}, {tokens} tokens")
    lay = bm.layout_for(layer)
    stored_ptrs = {t.data_ptr() for t in layer.stored_tensors().values()}  # views of stored buffers cost nothing
    row = {"out": out_f, "in": in_f, "layout": layout, "tokens": tokens, "err": err,
           "dense_bytes": dense.numel() * 2, "stored_bytes": layer.storage_bits() // 8, "kernel_bytes": lay.nbytes(),
           "runtime_extra_bytes": sum(t.numel() * t.element_size() for t in (lay.signs, lay.plane2, lay.sal_words)
                                      if t is not None and t.data_ptr() not in stored_ptrs),
           "blocks": bm.default_blocks(tokens, out_f, in_f, layer.block_size, bm._sm_count(x.device)),
           "dense_us": time_us(lambda: F.linear(x, dense)), "fused_us": time_us(lambda: layer(x))}
    layer.forward_mode = "dequant"
    row["dequant_us"] = None if GRAPHS["on"] else time_us(lambda: layer(x))
    if sweep:
        times = {cfg: time_us(lambda: bm.binary_matmul(x, lay, None, (16 if tokens <= 16 else 64, *cfg[:3]), cfg[3]))
                 for cfg in SWEEP}
        best = min(times, key=times.get)
        row["best_cfg"], row["best_us"] = {"block_n": best[0], "block_k": best[1], "split_k": best[2],
                                           "num_warps": best[3]}, times[best]
    return row


def table_line(r: dict, copy_gbs: float) -> str:
    def cell(key: str, nbytes: int) -> str:
        us = r.get(f"{key}_us")
        if us is None:
            return "n/a | n/a | n/a"
        gbs = nbytes / us / 1e3
        return f"{us:.1f} | {r['dense_us'] / us:.2f}x | {gbs:.0f} ({gbs / copy_gbs:.0%})"
    line = (f"| {r['out']} x {r['in']} | {r['layout']} | {r['tokens']} | {r['dense_us']:.1f} | "
            f"{cell('fused', r['kernel_bytes'])} | {cell('dequant', r['stored_bytes'])} | "
            f"{8 * r['kernel_bytes'] / (r['out'] * r['in']):.2f} |")
    if "best_us" in r:
        line += f" {r['best_us']:.1f} {tuple(r['best_cfg'].values())} |"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--cudagraph", action="store_true", help="time CUDA-graph replays (no host overhead, warm L2)")
    ap.add_argument("--sweep", action="store_true", help="also time other tiles (block_n, block_k, split_k, warps)")
    args = ap.parse_args()
    GRAPHS["on"] = args.cudagraph
    if not torch.cuda.is_available() or bm.triton is None:
        raise SystemExit("bench_binary_kernel.py needs a CUDA GPU and Triton. Fix: run it on a GPU machine.")
    copy_gbs = copy_bandwidth()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {bm.triton.__version__}; bf16 "
          f"activations, block 128, 8% salient columns; median us per call, "
          f"{'CUDA-graph replays (warm L2)' if args.cudagraph else 'host overhead included, cold L2'}; "
          f"copy bandwidth {copy_gbs:.0f} GB/s; GB/s on the bytes read (fused: its layout; dequant: stored)")
    head = ("| out x in | layout | tokens | dense bf16 us | fused us | fused vs dense | fused GB/s | "
            "dequant us | dequant vs dense | dequant GB/s | kernel bits/weight |")
    print(head + (" best swept us (bn, bk, split, warps) |" if args.sweep else ""))
    print("|---" * (head.count("|") - 1 + args.sweep) + "|")
    rows = []
    for (out_f, in_f), layout, tokens in itertools.product(SHAPES, args.layouts, args.tokens):
        rows.append(measure(out_f, in_f, layout, tokens, args.sweep))
        print(table_line(rows[-1], copy_gbs), flush=True)
    write_record(args.json, copy_gbs, rows, cudagraph=args.cudagraph)


if __name__ == "__main__":
    main()
