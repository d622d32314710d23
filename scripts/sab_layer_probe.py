"""SAB-LVLM on single testbed layers: r, the Lambda map and the weight / activation error of SAB
variants against ARB-RC, with statistics of the uncompressed model (the pipeline's statistics come
from the partly compressed model, so its per-layer errors differ).

    python scripts/sab_layer_probe.py                       # layers 27 and 28 down_proj, 32 samples
    python scripts/sab_layer_probe.py --layers 10.mlp.down_proj 28.mlp.down_proj

Written to find out why SAB lost to ARB-RC end to end on the testbed (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_properties import act_err, testbed_layer_stats, weight_err  # noqa: E402

VARIANTS = [("arb-rc", {}), ("sab", {}), ("sab", {"lambda_floor": 0.5}), ("sab", {"diff_quantile": 0.75}),
            ("sab", {"lambda_steers_selection": True})]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", nargs="+", default=["27.mlp.down_proj", "28.mlp.down_proj"])
    p.add_argument("--nsamples", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    from llava_fa.methods import build_config, get_method
    from llava_fa.methods.sab import significance_map

    names = [f"model.language_model.layers.{x}" for x in args.layers]
    model, stats, described = testbed_layer_stats(names, args.nsamples)
    print(f"calibration: {described}")
    for name in names:
        W, st = model.get_submodule(name).weight.detach().float().clone(), stats[name]
        lam, info = significance_map(W, st.hessian("text"), st.hessian("image"), build_config("sab"))
        sizes = dict(zip(("text-only", "vision-only", "cross", "neither"), (int(m.sum()) for m in info["masks"])))
        print(f"{name}: r = {info['r']:.3f}; Lambda min {lam.min():.3f} mean {lam.mean():.3f}, "
              f"share below 0.1 {(lam < 0.1).float().mean():.3f}; masks {sizes}")
        for method, options in VARIANTS:
            Q = get_method(method)(build_config(method, options)).compress(W, st).dequantize(torch.float32)
            print(f"  {method:6} {str(options or ''):36} weight error {weight_err(W, Q):.3f}   "
                  f"activation error {act_err(W, Q, st.xtx_sum()):.3f}")


if __name__ == "__main__":
    main()
