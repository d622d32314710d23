"""Error feedback on the input-axis spectrum (`fa-gptq -O axis=input`): a layer-level study on real
testbed weights (SmolLM2-135M language model of the cached testbed) with their real calibration X^T X.

For each layer and PolarQuant budget mag_bits + phase_bits (2+3, 3+3), per variant: the stored bits
per weight (every bit counted), the weight error ||W - W'||_F / ||W||_F and the output error
tr(E H E^T) / tr(W H W^T) with E = W - W' and H = X^T X of the calibration inputs (the loss GPTQ-type
methods minimize), in-sample (the samples that formed the methods' H) and held out (the same
measure with H of other calibration samples, seed 1: feedback fitted to one H may not carry over).

- fa quant rfft / rfft2: LLaVA-FA codes only (its defaults: data-free ODC, scale search, Lloyd levels);
- fa-gptq axis=output (rfft_out) and axis=input (rfft), and axis=input with H = I (no feedback);
- gptq 3-bit g64 (affine) for reference.

    python scripts/fa_input_axis_study.py [--layers 2 10 20] [--projs q_proj down_proj] [--nsamples 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_properties import testbed_layer_stats  # noqa: E402

PROJS = {"q_proj": "self_attn.q_proj", "o_proj": "self_attn.o_proj", "up_proj": "mlp.up_proj",
         "down_proj": "mlp.down_proj"}


def variants(bits: int) -> list[tuple[str, str, dict]]:
    """(label, method, options) at mag_bits = bits, phase_bits = 3."""
    pq = {"mag_bits": bits, "phase_bits": 3}
    return [(f"fa quant rfft {bits}+3", "fa", {"structure": "quant", "transform": "rfft", **pq}),
            (f"fa quant rfft2 {bits}+3", "fa", {"structure": "quant", "transform": "rfft2", **pq}),
            (f"fa-gptq output {bits}+3", "fa-gptq", {"axis": "output", **pq}),
            (f"fa-gptq input {bits}+3", "fa-gptq", {"axis": "input", **pq}),
            (f"fa-gptq input {bits}+3, H=I", "fa-gptq", {"axis": "input", **pq})]


def errors(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> tuple[float, float]:
    E, Wd, Hd = (W - Q).double(), W.double(), H.double()
    return float(E.norm() / Wd.norm()), float(((E @ Hd) * E).sum() / ((Wd @ Hd) * Wd).sum())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--projs", nargs="+", default=["q_proj", "down_proj"], choices=sorted(PROJS))
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from llava_fa.methods import LayerStats, build_config, get_method

    t0 = time.perf_counter()
    names = [f"model.language_model.layers.{i}.{PROJS[q]}" for i in args.layers for q in args.projs]
    print("command: python scripts/fa_input_axis_study.py " + " ".join(sys.argv[1:]))
    _, held, held_described = testbed_layer_stats(names, args.nsamples, seed=1)
    model, stats, described = testbed_layer_stats(names, args.nsamples)
    print(f"calibration (seed 0): {described}\nheld out (seed 1): {held_described}")
    print("output err = tr(E H E^T) / tr(W H W^T), E = W - W', H = X^T X: in-sample (calibration H), held out "
          "(seed-1 H); weight err = ||E|| / ||W||")
    print(f"{'layer':16} {'shape':>9} {'variant':28} {'bpw':>6} {'weight err':>10} {'output err':>10} {'held out':>9}")
    summary: dict[str, list[tuple[float, ...]]] = {}
    for name in names:
        W, st = model.get_submodule(name).weight.detach().float().clone(), stats[name]
        n, H, H_held = W.shape[1], st.xtx_sum(), held[name].xtx_sum()
        identity = LayerStats(n, xtx={"text": torch.eye(n)}, tokens={"text": 1, "image": 0})
        rows = variants(2) + variants(3) + [("gptq 3-bit g64", "gptq", {"bits": 3, "group_size": 64})]
        for label, method, options in rows:
            layer = get_method(method)(build_config(method, options)).compress(
                W, identity if label.endswith("H=I") else st)
            Q = layer.dequantize(torch.float32)
            (we, oe), (_, he) = errors(W, Q, H), errors(W, Q, H_held)
            summary.setdefault(label, []).append((layer.bits_per_weight(), we, oe, he))
            short = name.split("layers.")[-1].replace("self_attn.", "").replace("mlp.", "")
            print(f"{short:16} {'x'.join(map(str, W.shape)):>9} {label:28} {layer.bits_per_weight():6.3f} "
                  f"{we:10.4f} {oe:10.5f} {he:9.5f}", flush=True)
    print(f"\nmean over {len(names)} layers")
    print(f"{'variant':28} {'bpw':>6} {'weight err':>10} {'output err':>10} {'held out':>9}")
    for label, vals in summary.items():
        mean = [sum(v[i] for v in vals) / len(vals) for i in range(4)]
        print(f"{label:28} {mean[0]:6.3f} {mean[1]:10.4f} {mean[2]:10.5f} {mean[3]:9.5f}")
    print(f"\n{time.perf_counter() - t0:.0f} s, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
