"""Time one `affine` layer's GPU backends side by side (needs CUDA and Triton; gemlite if installed).

For each weight shape (7B-sized layers and the testbed's MLP), bit width and token count it times,
in the same run and from a cold L2 (triton.testing.do_bench flushes it before every call):
a dense float16 `F.linear` (what the "cached" mode runs), our fused Triton kernel ("fused"), and
gemlite's kernels on our codes ("gemlite"); it prints microseconds per call, the speed-up over dense,
and the achieved bandwidth on the bytes each reads (dense: the float16 weight; compressed: the packed
codes, scales and zeros), against the copy bandwidth measured first. Usage (on a GPU machine):

    PYTHONPATH=src python scripts/bench_kernels.py --json OUT.json > OUT.md
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from llava_fa.formats import AffineLinear
from llava_fa.kernels import affine_matmul as km
from llava_fa.kernels import gemlite_affine
from llava_fa.quantizers import AffineSpec, quantize_grouped

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (1536, 576)]  # (out, in): Llama-2-7B layers, testbed MLP


GRAPHS = {"on": False}  # --cudagraph: replay captured calls (no host overhead; L2 not flushed)


def time_us(fn) -> float:
    from triton.testing import do_bench, do_bench_cudagraph

    if GRAPHS["on"]:
        fn()  # autotuning and the first-call packing happen outside the capture
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=50, return_mode="median") * 1000
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1000


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + write counted)."""
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / time_us(lambda: b.copy_(a)) / 1e3


def write_record(path: str | None, copy_gbs: float, rows: list[dict], **extra) -> None:
    """The measurements as JSON (with the device and the copy bandwidth they are read against)."""
    if path:
        with open(path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs, **extra, "rows": rows}, f,
                      indent=1, default=str)


def measure(out_f: int, in_f: int, bits: int, tokens: int, group: int) -> dict:
    torch.manual_seed(0)
    w = torch.randn(out_f, in_f) * 0.02
    codes, scale, zero = quantize_grouped(w, AffineSpec(bits, group, False))
    layer = AffineLinear.from_codes(codes, scale, zero, bits=bits, sym=False).cuda()
    x = torch.randn(tokens, in_f, device="cuda", dtype=torch.float16)
    dense = layer.dequantize(torch.float16)
    ref = x.float() @ dense.float().T
    packed = sum(t.numel() * t.element_size() for t in layer.stored_tensors().values())
    row = {"out": out_f, "in": in_f, "bits": bits, "tokens": tokens, "group": group,
           "dense_bytes": dense.numel() * 2, "packed_bytes": packed,
           "dense_us": time_us(lambda: F.linear(x, dense))}
    for mode in ("fused", "gemlite"):
        layer.forward_mode = mode
        if mode == "gemlite" and not gemlite_affine.available(layer, x):
            row[f"{mode}_us"] = None
            continue
        err = ((layer(x).float() - ref).abs().max() / ref.abs().max()).item()
        if err > 0.02:
            raise SystemExit(f"{mode} result off by {err:.3g} for {out_f}x{in_f} {bits}-bit, {tokens} tokens")
        row[f"{mode}_us"] = time_us(lambda: layer(x))
    return row


def table_line(r: dict, copy_gbs: float) -> str:
    def cell(key: str, nbytes: int) -> str:
        us = r[f"{key}_us"]
        if us is None:
            return "n/a | n/a | n/a"
        gbs = nbytes / us / 1e3
        return f"{us:.1f} | {r['dense_us'] / us:.2f}x | {gbs:.0f} GB/s ({gbs / copy_gbs:.0%})"
    dense_gbs = r["dense_bytes"] / r["dense_us"] / 1e3
    return (f"| {r['out']} x {r['in']} | {r['bits']} | {r['tokens']} | {r['dense_us']:.1f} "
            f"({dense_gbs / copy_gbs:.0%}) | {cell('fused', r['packed_bytes'])} | {cell('gemlite', r['packed_bytes'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--group-size", type=int, default=64)  # 64 divides every width here, 128 not 576
    ap.add_argument("--json", help="also write every measurement here")
    ap.add_argument("--cudagraph", action="store_true", help="time CUDA-graph replays (no host overhead, warm L2)")
    ap.add_argument("--gemlite-config", help="gemlite's tuned kernel configs (e.g. its configs/h100.json)")
    args = ap.parse_args()
    GRAPHS["on"] = args.cudagraph
    if args.gemlite_config:
        import gemlite

        gemlite.load_config(args.gemlite_config)
    if not torch.cuda.is_available() or km.triton is None:
        raise SystemExit("bench_kernels.py needs a CUDA GPU and Triton. Fix: run it on a GPU machine.")
    copy_gbs = copy_bandwidth()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {km.triton.__version__}, "
          f"gemlite {'installed' if gemlite_affine.A16Wn is not None else 'absent'}; float16 activations, "
          f"asymmetric codes, group {args.group_size}; median us per call, "
          f"{'CUDA-graph replays (no host overhead, warm L2)' if args.cudagraph else 'host overhead included, cold L2'}; "
          f"copy bandwidth {copy_gbs:.0f} GB/s")
    print("| out x in | bits | tokens | dense fp16 us (of copy bw) | fused us | fused vs dense | fused bw | "
          "gemlite us | gemlite vs dense | gemlite bw |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (out_f, in_f), bits, tokens in itertools.product(SHAPES, args.bits, args.tokens):
        rows.append(measure(out_f, in_f, bits, tokens, args.group_size))
        print(table_line(rows[-1], copy_gbs), flush=True)
    write_record(args.json, copy_gbs, rows)


if __name__ == "__main__":
    main()
