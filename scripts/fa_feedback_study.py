"""Does GPTQ-style error feedback help LLaVA-FA? A layer-level study on real testbed weights.

LLaVA-FA rounds every spectral coefficient on its own; GPTQ (and the rotation baseline built on it)
pushes each column's rounding error onto the columns still to come, weighted by the Hessian. With a
DFT along the *output* axis only, each input column stays a column, the loss tr(D H D^T) keeps the
same real H (the transform is unitary on the other side), and GPTQ's column loop runs unchanged on
complex columns. This script compares, at about 3.1-3.3 bpw, on a few layers with real calibration:

- `fa` quant-only (rfft2, PolarQuant 2+4, data-free and calibrated ODC): the library method;
- output-axis DFT + PolarQuant 2+4 without feedback, and with GPTQ feedback (this script);
- GPTQ 3-bit and block Hadamard + GPTQ 3-bit (the library methods).

Activation-weighted error ||(W - W')X^T|| / ||W X^T|| on the calibration inputs. This study came
first (in double precision, bits counted analytically); the method `fa-gptq` is its stored form.

    python scripts/fa_feedback_study.py [--layers 2 10 20] [--nsamples 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_properties import act_err, testbed_layer_stats  # noqa: E402

from llava_fa.quantizers.polar import f16_up, lloyd_levels, polar_round  # noqa: E402

MAG_BITS, PHASE_BITS, GROUP = 2, 4, 64


def group_scales(S: torch.Tensor) -> torch.Tensor:
    """Per row, one fp16 scale (absmax of |z|) for each group of GROUP columns, repeated per column."""
    h, n = S.shape
    mags = S.abs().reshape(h, n // GROUP, GROUP).amax(-1).clamp_min(1e-12)
    return f16_up(mags).repeat_interleave(GROUP, dim=1)


def output_dft_polar(W: torch.Tensor, H: torch.Tensor | None, damp: float = 0.01) -> torch.Tensor:
    """rfft along the output axis, PolarQuant 2+4 per group of 64 columns; GPTQ feedback if H is given.
    Lloyd levels are fitted once on the unquantized spectrum; a group's scales are fixed when the loop
    reaches its first column (as GPTQ fixes its groups' grids)."""
    m, n = W.shape
    S = torch.fft.rfft(W.double(), dim=0, norm="ortho")  # (m//2+1, n) complex
    levels = lloyd_levels((S.abs() / group_scales(S)).reshape(-1).float(), MAG_BITS).double()
    if H is None:
        Q = polar_round(S, group_scales(S), levels, PHASE_BITS)[2]
        return torch.fft.irfft(Q, n=m, dim=0, norm="ortho").float()
    H = H.double().clone()
    H += torch.eye(n, dtype=H.dtype) * (damp * torch.diagonal(H).mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(S)
    for g0 in range(0, n, GROUP):
        scale = group_scales(S[:, g0:g0 + GROUP])[:, 0]
        for j in range(g0, g0 + GROUP):
            Q[:, j] = polar_round(S[:, j], scale, levels, PHASE_BITS)[2]
            err = (S[:, j] - Q[:, j]) / U[j, j]
            S[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
    return torch.fft.irfft(Q, n=m, dim=0, norm="ortho").float()


def output_dft_bpw(m: int, n: int) -> float:
    h = m // 2 + 1
    return (h * n * (MAG_BITS + PHASE_BITS) + h * (n // GROUP) * 16 + 16 * (1 << MAG_BITS)) / (m * n)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--nsamples", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    from llava_fa.methods import build_config, get_method

    names = [f"model.language_model.layers.{i}.{proj}" for i in args.layers
             for proj in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")]
    model, stats, described = testbed_layer_stats(names, args.nsamples)
    library = [("fa quant rfft2, ODC data-free", "fa", {"structure": "quant"}),
               ("fa quant rfft2, ODC calibrated", "fa", {"structure": "quant", "odc": "calibrated"}),
               ("gptq 3-bit g64", "gptq", {"bits": 3, "group_size": 64}),
               ("hadamard + gptq 3-bit g64", "hadamard", {"bits": 3, "group_size": 64}),
               ("fa-gptq (the stored method)", "fa-gptq", {})]
    print(f"calibration: {described}")
    print(f"{'layer':28} {'variant':36} {'bpw':>6} {'act. err':>9}")
    for name in names:
        W, st = model.get_submodule(name).weight.detach().float().clone(), stats[name]
        H = st.xtx_sum()
        short = name.split("language_model.")[-1]
        for label, method, options in library:
            layer = get_method(method)(build_config(method, options)).compress(W, st)
            print(f"{short:28} {label:36} {layer.bits_per_weight():6.3f} "
                  f"{act_err(W, layer.dequantize(torch.float32), H):9.4f}")
        bpw = output_dft_bpw(*W.shape)
        for label, hess in (("output-axis DFT + polar, no feedback", None), ("output-axis DFT + polar + GPTQ fb", H)):
            print(f"{short:28} {label:36} {bpw:6.3f} {act_err(W, output_dft_polar(W, hess), H):9.4f}", flush=True)


if __name__ == "__main__":
    main()
