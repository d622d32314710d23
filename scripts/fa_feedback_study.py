"""Does GPTQ-style error feedback help LLaVA-FA? A layer-level study on real testbed weights.

LLaVA-FA rounds every spectral coefficient on its own; GPTQ (and the rotation baseline built on it)
pushes each column's rounding error onto the columns still to come, weighted by the Hessian. With a
DFT along the *output* axis only, each input column stays a column, the loss tr(D H D^T) keeps the
same real H (the transform is unitary on the other side), and GPTQ's column loop runs unchanged on
complex columns. This script compares, at about 3.1-3.3 bpw, on a few layers with real calibration:

- `fa` quant-only (rfft2, PolarQuant 2+4, data-free and calibrated ODC): the library method;
- output-axis DFT + PolarQuant 2+4 without feedback, and with GPTQ feedback (this script);
- GPTQ 3-bit and block Hadamard + GPTQ 3-bit (the library methods).

Activation-weighted error ||(W - W')X^T|| / ||W X^T|| on the calibration inputs; bpw from the stored
layers.

    python scripts/fa_feedback_study.py [--layers 2 10 20] [--nsamples 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_properties import act_err, testbed_layer_stats  # noqa: E402

def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--nsamples", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    from llava_fa.methods import LayerStats, build_config, get_method

    names = [f"model.language_model.layers.{i}.{proj}" for i in args.layers
             for proj in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")]
    model, stats, described = testbed_layer_stats(names, args.nsamples)
    library = [("fa quant rfft2, ODC data-free", "fa", {"transform": "rfft2", "structure": "quant"}),
               ("fa quant rfft2, ODC calibrated", "fa", {"transform": "rfft2", "structure": "quant", "odc": "calibrated"}),
               ("gptq 3-bit g64", "gptq", {"bits": 3, "group_size": 64}),
               ("hadamard + gptq 3-bit g64", "hadamard", {"bits": 3, "group_size": 64}),
               ("fa-gptq", "fa-gptq", {})]
    print(f"calibration: {described}")
    print(f"{'layer':28} {'variant':36} {'bpw':>6} {'act. err':>9}")
    for name in names:
        W, st = model.get_submodule(name).weight.detach().float().clone(), stats[name]
        n = W.shape[1]
        # The same rounding without feedback: an identity Hessian has no off-diagonal to push errors along.
        identity = LayerStats(n, xtx={"text": torch.eye(n)}, tokens={"text": 1, "image": 0})
        short = name.split("language_model.")[-1]
        for label, method, options in library + [("fa-gptq without feedback", "fa-gptq", {})]:
            layer = get_method(method)(build_config(method, options)).compress(
                W, identity if label.endswith("without feedback") else st)
            print(f"{short:28} {label:36} {layer.bits_per_weight():6.3f} "
                  f"{act_err(W, layer.dequantize(torch.float32), st.xtx_sum()):9.4f}", flush=True)


if __name__ == "__main__":
    main()
