"""Exact vs randomized SVD in the LLaVA-FA alternation (issue 16 item 2): quality and CPU time per layer.

For each layer and setting, `fa` compresses the same weight twice, with `svd=exact` (a full SVD per
alternation) and with `svd=randomized` (top-rank range finder, warm-started between alternations).
Quality: the ratio of the kept iterate's weighted error (min of the fit history), randomized over
exact (1.0 = same; the target is <= 1.01). Time: wall seconds of the whole `compress` call.

Real layers: SmolLM2-135M (the project's pinned GGUF). A 7B-like shape: a synthetic low-rank plus
noise weight with outlier input channels (no 7B weights on this machine), the full alternation at
--big-shape, and one SVD call (the step that changes) at --svd-shape.

    python scripts/fa_speed_study.py [--layers 2 10 20] [--threads 1] [--big-shape 1024 2752]
        [--svd-shape 4096 11008] [--out docs/results/fa_speed_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

SETTINGS = {"default (rank 8)": {}, "rank 32": {"rank": 32}, "rank 64": {"rank": 64},
            "bpw 2.5": {"bpw": 2.5}, "bpw 3": {"bpw": 3.0}}
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj")
TARGET = 1.01


def load_smollm2():
    from llava_fa import assets

    try:  # the loader moved from testbed/smollm2.py to testbed/language_models.py
        from llava_fa.testbed.language_models import load_gguf_lm
    except ImportError:
        from llava_fa.testbed.smollm2 import load_smollm2 as load_gguf_lm
    return load_gguf_lm(assets.smollm2_gguf())[0]


def real_layers(layer_ids: list[int]) -> dict[str, torch.Tensor]:
    lm = load_smollm2()
    return {f"{i}.{p}": lm.get_submodule(f"model.layers.{i}.{p}").weight.detach().float().clone()
            for i in layer_ids for p in PROJECTIONS}


def synthetic_weight(m: int, n: int, seed: int = 0) -> torch.Tensor:
    """A decaying low-rank part, noise and a few outlier input channels, at LLM weight scale."""
    g = torch.Generator().manual_seed(seed)
    k = 64
    W = (torch.randn(m, k, generator=g) * torch.logspace(0, -1, k)) @ torch.randn(k, n, generator=g) * (0.3 / k)
    W += 0.02 * torch.randn(m, n, generator=g)
    W[:, torch.randperm(n, generator=g)[: n // 200]] *= 5
    return W


def fit(W: torch.Tensor, options: dict, svd: str) -> tuple[float, float, dict]:
    """(kept weighted error, wall seconds, fourier parameters) of `fa` with the given SVD."""
    from llava_fa.methods import build_config, get_method

    method = get_method("fa")(build_config("fa", {"transform": "rfft2", **options, "svd": svd})  # as recorded)
    start = time.perf_counter()
    layer = method.compress(W, None)
    seconds = time.perf_counter() - start
    return min(layer.fit_history), seconds, layer._params


def compare(name: str, W: torch.Tensor, setting: str) -> dict:
    err_exact, t_exact, params = fit(W, SETTINGS[setting], "exact")
    err_fast, t_fast, _ = fit(W, SETTINGS[setting], "randomized")
    row = {"layer": name, "shape": list(W.shape), "setting": setting, "rank": params["rank"],
           "err_exact": err_exact, "err_randomized": err_fast, "ratio": err_fast / err_exact,
           "s_exact": t_exact, "s_randomized": t_fast}
    print(f"{name:24} {setting:16} rank {row['rank']:3}  ratio {row['ratio']:.5f}  "
          f"{t_exact:7.2f} s -> {t_fast:6.2f} s", file=sys.stderr, flush=True)
    return row


def svd_step(m: int, n: int, rank: int) -> dict:
    """Seconds of one low-rank step (weighted FourierSVD of an rfft2 grid) at an (m, n) weight."""
    from llava_fa.methods.fa.lowrank import fourier_svd
    from llava_fa.transforms import fourier as ft

    S = ft.forward(synthetic_weight(m, n), "rfft2")
    colw = ft.column_weights(m, n, "rfft2")
    out = {"shape": [m, n], "grid": list(S.shape), "rank": rank}
    for svd in ("randomized", "exact"):
        start = time.perf_counter()
        fourier_svd(S, rank, colw, svd)
        out[f"s_{svd}"] = time.perf_counter() - start
        print(f"svd step {m}x{n} rank {rank} {svd}: {out[f's_{svd}']:.2f} s", file=sys.stderr, flush=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| layer | shape | setting | rank | err exact | err randomized | ratio | s exact | s randomized |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['shape'][0]}x{r['shape'][1]} | {r['setting']} | {r['rank']} | "
                     f"{r['err_exact']:.5g} | {r['err_randomized']:.5g} | {r['ratio']:.5f} | "
                     f"{r['s_exact']:.2f} | {r['s_randomized']:.2f} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    lines = ["| setting | layers | worst ratio | mean ratio | total s exact | total s randomized |",
             "|---|---:|---:|---:|---:|---:|"]
    for setting in SETTINGS:
        sel = [r for r in rows if r["setting"] == setting]
        if sel:
            ratios = [r["ratio"] for r in sel]
            lines.append(f"| {setting} | {len(sel)} | {max(ratios):.5f} | {sum(ratios) / len(ratios):.5f} | "
                         f"{sum(r['s_exact'] for r in sel):.1f} | {sum(r['s_randomized'] for r in sel):.1f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    # One thread: on 2 shared cores, two MKL threads stall in LAPACK calls and make timings noisy.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--big-shape", type=int, nargs=2, default=[1024, 2752], metavar=("M", "N"))
    p.add_argument("--big-settings", nargs="+", default=["default (rank 8)", "rank 64"], choices=list(SETTINGS))
    p.add_argument("--svd-shape", type=int, nargs=2, default=[4096, 11008], metavar=("M", "N"))
    p.add_argument("--svd-rank", type=int, default=64)
    p.add_argument("--skip-svd-step", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/results/fa_speed_cpu.json"))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = [compare(name, W, s) for name, W in real_layers(args.layers).items() for s in args.settings]
    m, n = args.big_shape
    big = synthetic_weight(m, n)
    rows += [compare(f"synthetic {m}x{n}", big, s) for s in args.big_settings]
    step = None if args.skip_svd_step else svd_step(*args.svd_shape, args.svd_rank)
    worst = max(r["ratio"] for r in rows)
    report = {"command": "python " + " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "target_ratio": TARGET,
              "worst_ratio": worst, "rows": rows, "svd_step": step}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(summary(rows) + "\n\n" + table(rows))
    if step:
        print(f"\nOne SVD step at {step['shape'][0]}x{step['shape'][1]} (grid {step['grid'][0]}x{step['grid'][1]}), "
              f"rank {step['rank']}: exact {step['s_exact']:.1f} s, randomized {step['s_randomized']:.2f} s")
    print(f"\nworst error ratio {worst:.5f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
