"""How many tensor operations each method runs to compress a Llama-2-7B-shaped decoder, counted on CPU.

On a GPU each operation is at least one kernel launch; a method made of many small operations is
bound by launches (about 8 us each: gptq's column loop without its Triton kernel counted 35.9 M
operations here and took 272 s on an H200). The count comes from one 64-row layer of each input
width (4096: q, k, v, o, gate, up; 11008: down), since the loops run over columns and blocks, not
rows, and is scaled to 32 decoder layers. Synthetic weights and statistics (scripts/bench_layer.py).

    PYTHONPATH=src python scripts/method_op_counts.py [METHOD ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_layer import synthetic_layer  # noqa: E402

from llava_fa.methods.base import build_config, get_method  # noqa: E402

METHODS = ("svd-llm", "asvd", "lqer", "caldera", "fa-gptq", "pb-llm", "billm", "arb", "arb-rc", "arb-x", "sab",
           "gptq", "fa")
LAUNCH_SECONDS = 8e-6


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count(name: str, n: int) -> int:
    weight, stats = synthetic_layer(64, n, 512, "cpu")
    method = get_method(name)(build_config(name, {}))
    with OpCounter() as counter:
        method.compress(weight, stats)
    return counter.count


def main() -> None:
    torch.set_num_threads(1)
    print("| method | ops, n = 4096 | ops, n = 11008 | 7B model (M ops) | at 8 us per op (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in sys.argv[1:] or METHODS:
        narrow, wide = count(name, 4096), count(name, 11008)
        total = 32 * (6 * narrow + wide)
        print(f"| {name} | {narrow:,} | {wide:,} | {total / 1e6:.2f} | {total * LAUNCH_SECONDS:.0f} |", flush=True)


if __name__ == "__main__":
    main()
